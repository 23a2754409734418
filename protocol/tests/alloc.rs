//! Batching allocates nothing beyond its output buffer: after warm-up, building frames of
//! 1, 16 and 64 messages into a reused buffer performs zero allocations, and so does
//! encoding a publication into a reused buffer; encoding one into a buffer of its own, with
//! or without room for a frame header, allocates that buffer and nothing else.
//!
//! A counting global allocator counts allocations made on the current thread only, so the
//! test harness's own threads cannot disturb the count.

#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use coregate_protocol::*;

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations<R>(f: impl FnOnce() -> R) -> (usize, R) {
    let before = ALLOCS.with(Cell::get);
    let r = f();
    (ALLOCS.with(Cell::get) - before, r)
}

#[test]
fn frame_builder_and_publication_encode_allocate_nothing_after_warm_up() {
    let topic = Topic::parse("channel:1234567890").unwrap();
    let mut payload =
        br#"{"op":"message_new","d":{"id":"m1","author":"u1","text":"hello there"}}"#.to_vec();
    let publication =
        Publication::from_backend_payload_in(topic, &mut payload, 1 << 16, EncodingSet::ALL)
            .unwrap();

    for encoding in Encoding::ALL {
        let message = publication.encode(encoding);
        let mut fb = FrameBuilder::new(encoding, 1 << 20);
        // Warm-up: grow the buffer to the largest frame once.
        for _ in 0..64 {
            fb.push(&message).unwrap();
        }
        let mut buf = fb.into_inner();
        for n in [1usize, 16, 64] {
            let (count, b) = allocations(|| {
                let mut fb = FrameBuilder::from_buffer(encoding, 1 << 20, std::mem::take(&mut buf));
                for _ in 0..n {
                    fb.push(&message).unwrap();
                }
                assert_eq!(fb.message_count(), n);
                fb.into_inner()
            });
            buf = b;
            assert_eq!(count, 0, "{encoding} frame of {n}");
        }

        let mut out = Vec::with_capacity(1024);
        let (count, ()) = allocations(|| {
            out.clear();
            publication.encode_into(encoding, &mut out);
        });
        assert_eq!(count, 0, "{encoding} encode_into");
        // `encode` allocates exactly its output.
        let (count, _bytes) = allocations(|| publication.encode(encoding));
        assert_eq!(count, 1, "{encoding} encode");
        let (count, (framed, room)) =
            allocations(|| publication.encode_with_headroom(encoding, |_| 10));
        assert_eq!(count, 1, "{encoding} encode_with_headroom");
        assert_eq!(
            (framed.len() - room, framed.capacity()),
            (out.len(), framed.len())
        );
    }
}
