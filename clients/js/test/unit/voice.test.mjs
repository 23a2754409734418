// gw.voice on the fake clock and socket: joins answered by the room's state and refused by
// voice errors with and without a ref, mute/unmute/leave confirmed by the room's events about
// this user, the room kept up to date, sessions and their ends, and the rejoin after a reconnect.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { GatewayError, VoiceError } from '../../dist/index.js';
import { harness } from '../support/harness.mjs';
import { settle } from '../support/fake-clock.mjs';

const OFFER = 'v=0\r\n(an offer)\r\n';
const CANDIDATE = 'candidate:1 1 udp 2130706175 127.0.0.1 40000 typ host';

const alice = { user_id: 'alice', name: 'ALICE', muted: false };
const bob = { user_id: 'bob', name: 'BOB', muted: false };

/** What the SFU sends a joiner: the room, its offer and its candidate, in one frame. */
function admit(socket, channel, participants) {
  socket.deliver(
    { op: 'voice_room_state', d: { channel, participants } },
    { op: 'voice_offer', d: { channel, sdp: OFFER } },
    { op: 'voice_ice_candidate', d: { channel, candidate: CANDIDATE } },
  );
}

/** The gateway's sessions and ends, and the order of session events against offers. */
function recordVoice(gw) {
  const log = { sessions: [], ends: [], errors: [], order: [] };
  gw.voice.on('session', (s) => {
    log.sessions.push(s);
    log.order.push(`session:${s.cause}`);
  });
  gw.voice.on('end', (e) => log.ends.push(e));
  gw.voice.on('error', (e) => log.errors.push(e));
  gw.on('voice_offer', () => log.order.push('offer'));
  return log;
}

/** A connected gateway in `lounge` (joined with `options`), and its records. */
async function inLounge(options = {}) {
  const h = harness();
  h.sockets[0].handshake();
  const log = recordVoice(h.gw);
  const joined = h.gw.voice.join('lounge', options);
  admit(h.sockets[0], 'lounge', [bob, alice]);
  await joined;
  return { ...h, log };
}

test('join: resolves with the room state; the session event comes before the offer, in the same frame', async () => {
  const { gw, sockets } = harness();
  sockets[0].handshake();
  const log = recordVoice(gw);
  const joined = gw.voice.join('lounge');
  assert.deepEqual(sockets[0].sentOps('voice_join').map((m) => m.d), [{ channel: 'lounge' }]);
  assert.equal(gw.voice.room.state, 'joining');
  admit(sockets[0], 'lounge', [bob, alice]);
  // Synchronously, before the join's promise resumes anyone: a listener can make its peer connection.
  assert.deepEqual(log.order, ['session:join', 'offer']);
  assert.deepEqual(await joined, { channel: 'lounge', participants: [bob, alice] });
  assert.deepEqual(log.sessions, [{ channel: 'lounge', participants: [bob, alice], cause: 'join' }]);
  assert.deepEqual(gw.voice.room, { channel: 'lounge', state: 'joined', muted: false, rejoin: false, participants: [bob, alice] });
});

test('answer and candidate: the wire shapes; a candidate object gives its line, the end of candidates sends nothing', async () => {
  const { gw, sockets } = await inLounge();
  assert.equal(gw.voice.answer('lounge', 'v=0\r\n(an answer)\r\n'), true);
  assert.equal(gw.voice.candidate('lounge', { candidate: CANDIDATE, sdpMid: '0', sdpMLineIndex: 0 }), true);
  assert.equal(gw.voice.candidate('lounge', CANDIDATE), true);
  assert.equal(gw.voice.candidate('lounge', null), false);
  assert.equal(gw.voice.candidate('lounge', { candidate: '' }), false);
  assert.deepEqual(
    sockets[0].messages.slice(-3).map((m) => [m.op, m.d]),
    [
      ['voice_answer', { channel: 'lounge', sdp: 'v=0\r\n(an answer)\r\n' }],
      ['voice_ice_candidate', { channel: 'lounge', candidate: CANDIDATE }],
      ['voice_ice_candidate', { channel: 'lounge', candidate: CANDIDATE }],
    ],
  );
  sockets[0].serverClose(1006);
  assert.equal(gw.voice.answer('lounge', 'v=0'), false, 'not connected: not sent');
});

test('join refused with its ref (forbidden) rejects with a VoiceError naming the channel, and forgets the room', async () => {
  const { gw, sockets } = harness();
  sockets[0].handshake();
  const refused = gw.voice.join('vip');
  const [join] = sockets[0].sentOps('voice_join');
  sockets[0].deliver({ op: 'voice_error', d: { code: 'forbidden', message: 'not allowed' }, ref: join.ref });
  await assert.rejects(refused, (error) => {
    assert.ok(error instanceof VoiceError && error instanceof GatewayError);
    assert.deepEqual([error.name, error.code, error.message, error.channel], ['VoiceError', 'forbidden', 'not allowed', 'vip']);
    return true;
  });
  assert.equal(gw.voice.room, undefined);
});

test("join refused by the SFU without a ref (room_full) rejects; the SFU's other errors are events", async () => {
  const { gw, sockets } = harness();
  sockets[0].handshake();
  const log = recordVoice(gw);
  const refused = gw.voice.join('lounge');
  sockets[0].deliver({ op: 'voice_error', d: { code: 'room_full', message: 'full' } });
  await assert.rejects(refused, { name: 'VoiceError', code: 'room_full', channel: 'lounge' });
  assert.equal(gw.voice.room, undefined);
  sockets[0].deliver({ op: 'voice_error', d: { code: 'bad_sdp', message: 'unparsable' } });
  assert.deepEqual(log.errors.map((e) => [e.code, e.message]), [['bad_sdp', 'unparsable']]);
  assert.deepEqual(log.ends, []);
});

test("join: no reply within the request's timeout is the client's timeout, not the SFU's", async () => {
  const { gw, clock, sockets } = harness({ requestTimeoutMs: 2000 });
  sockets[0].handshake();
  const waiting = assert.rejects(
    gw.voice.join('lounge'),
    (error) => error instanceof GatewayError && !(error instanceof VoiceError) && error.code === 'timeout',
  );
  await clock.advance(1999);
  assert.equal(gw.voice.room.state, 'joining');
  await clock.advance(1);
  await waiting;
  assert.equal(gw.voice.room, undefined);
});

test('the room follows its events: joined, muted, unmuted, left', async () => {
  const { gw, sockets } = await inLounge();
  const say = (op, d) => sockets[0].deliver({ op, d: { channel: 'lounge', ...d } });
  say('voice_user_joined', { user_id: 'carol' });
  say('voice_user_muted', { user_id: 'bob' });
  say('voice_user_joined', { user_id: 'dave', name: 'DAVE' });
  say('voice_user_left', { user_id: 'carol' });
  say('voice_user_muted', { user_id: 'someone-else-entirely' });
  say('voice_user_joined', { user_id: 'eve' }); // in another room: not this one
  sockets[0].deliver({ op: 'voice_user_joined', d: { channel: 'elsewhere', user_id: 'mallory' } });
  assert.deepEqual(gw.voice.room.participants, [
    { ...bob, muted: true },
    alice,
    { user_id: 'dave', name: 'DAVE', muted: false },
    { user_id: 'eve', muted: false },
  ]);
  say('voice_user_unmuted', { user_id: 'bob' });
  assert.equal(gw.voice.room.participants[0].muted, false);
  // A copy: the app cannot change the client's view by mistake.
  gw.voice.room.participants.pop();
  assert.equal(gw.voice.room.participants.length, 4);
});

test("mute and unmute resolve on the room's event about this user, not someone else's", async () => {
  const { gw, sockets } = await inLounge();
  let muted = false;
  const muting = gw.voice.mute('lounge').then(() => (muted = true));
  const [mute] = sockets[0].sentOps('voice_mute');
  assert.deepEqual(mute.d, { channel: 'lounge' });
  assert.equal(typeof mute.ref, 'number');
  sockets[0].deliver({ op: 'voice_user_muted', d: { channel: 'lounge', user_id: 'bob' } });
  sockets[0].deliver({ op: 'voice_user_muted', d: { channel: 'other', user_id: 'alice' } });
  await settle();
  assert.equal(muted, false);
  sockets[0].deliver({ op: 'voice_user_muted', d: { channel: 'lounge', user_id: 'alice' } });
  await muting;
  assert.equal(gw.voice.room.muted, true);
  assert.equal(gw.voice.room.participants.find((p) => p.user_id === 'alice').muted, true);
  const unmuting = gw.voice.unmute('lounge');
  sockets[0].deliver({ op: 'voice_user_unmuted', d: { channel: 'lounge', user_id: 'alice' } });
  await unmuting;
  assert.equal(gw.voice.room.muted, false);
});

test('mute, unmute or leave of a room the connection is not in reject not_in_room (by their ref)', async () => {
  const { gw, sockets } = harness();
  sockets[0].handshake();
  const attempts = [gw.voice.mute('nowhere'), gw.voice.unmute('nowhere'), gw.voice.leave('nowhere')].map((attempt) =>
    assert.rejects(attempt, { name: 'VoiceError', code: 'not_in_room', channel: 'nowhere' }),
  );
  const sent = sockets[0].messages.filter((m) => m.op.startsWith('voice_'));
  assert.deepEqual(sent.map((m) => m.op), ['voice_mute', 'voice_unmute', 'voice_leave']);
  for (const message of sent) {
    sockets[0].deliver({ op: 'voice_error', d: { code: 'not_in_room', message: 'not in it' }, ref: message.ref });
  }
  await Promise.all(attempts);
});

test('leave: the session ends at once; resolves when the room says this user left', async () => {
  const { gw, sockets, log } = await inLounge();
  let left = false;
  const leaving = gw.voice.leave('lounge').then(() => (left = true));
  assert.deepEqual(log.ends, [{ channel: 'lounge', reason: 'left', rejoining: false }]);
  assert.equal(gw.voice.room, undefined);
  assert.deepEqual(sockets[0].sentOps('voice_leave').map((m) => m.d), [{ channel: 'lounge' }]);
  sockets[0].deliver({ op: 'voice_user_left', d: { channel: 'lounge', user_id: 'bob' } });
  await settle();
  assert.equal(left, false);
  sockets[0].deliver({ op: 'voice_user_left', d: { channel: 'lounge', user_id: 'alice' } });
  await leaving;
});

test('joining another channel ends the session in the first; joining the same one again is a new session', async () => {
  const { gw, sockets, log } = await inLounge();
  const again = gw.voice.join('lounge');
  assert.deepEqual(log.ends, [], 'the same room: the new session replaces the old');
  admit(sockets[0], 'lounge', [bob, alice]);
  await again;
  const other = gw.voice.join('studio');
  assert.deepEqual(log.ends, [{ channel: 'lounge', reason: 'left', rejoining: false }]);
  // The SFU tells this user it left the first room after the new one is joined: ignored.
  sockets[0].deliver({ op: 'voice_user_left', d: { channel: 'lounge', user_id: 'alice' } });
  admit(sockets[0], 'studio', [alice]);
  await other;
  assert.deepEqual(log.sessions.map((s) => [s.channel, s.cause]), [['lounge', 'join'], ['lounge', 'join'], ['studio', 'join']]);
  assert.equal(gw.voice.room.channel, 'studio');
});

test('a room state while in the room (moved to another node) is a new session', async () => {
  const { gw, sockets, log } = await inLounge();
  admit(sockets[0], 'lounge', [alice, bob]);
  assert.deepEqual(log.sessions.map((s) => s.cause), ['join', 'moved']);
  assert.deepEqual(log.order, ['session:join', 'offer', 'session:moved', 'offer']);
  assert.deepEqual(log.ends, []);
  assert.deepEqual(gw.voice.room.participants, [alice, bob]);
});

test("the SFU's timeout ends the session (failed); one that comes while joining again is the old session's", async () => {
  const { gw, sockets, log } = await inLounge();
  const again = gw.voice.join('lounge');
  sockets[0].deliver({ op: 'voice_error', d: { code: 'timeout', message: 'ICE failed' } });
  assert.deepEqual(log.ends, []);
  assert.equal(log.errors.length, 1);
  admit(sockets[0], 'lounge', [bob, alice]);
  await again;
  sockets[0].deliver(
    { op: 'voice_error', d: { code: 'timeout', message: 'ICE failed' } },
    { op: 'voice_user_left', d: { channel: 'lounge', user_id: 'alice' } },
  );
  assert.equal(log.ends.length, 1);
  const [end] = log.ends;
  assert.deepEqual([end.channel, end.reason, end.rejoining, end.error.code, end.error.channel], ['lounge', 'failed', false, 'timeout', 'lounge']);
  assert.equal(gw.voice.room, undefined);
});

test('without rejoin, a lost connection ends the session and the next connection does not join', async () => {
  const { gw, clock, sockets, log } = await inLounge();
  sockets[0].serverClose(1006);
  assert.deepEqual(log.ends, [{ channel: 'lounge', reason: 'disconnected', rejoining: false }]);
  assert.equal(gw.voice.room, undefined);
  await clock.advance(250);
  sockets[1].handshake();
  await settle();
  assert.deepEqual(sockets[1].sentOps('voice_join'), []);
});

test('rejoin: after a reconnect the client joins again, keeps the mute, and the app gets a new session', async () => {
  const { gw, clock, sockets, log } = await inLounge({ rejoin: true });
  const muting = gw.voice.mute('lounge');
  sockets[0].deliver({ op: 'voice_user_muted', d: { channel: 'lounge', user_id: 'alice' } });
  await muting;
  sockets[0].serverClose(1006);
  assert.deepEqual(log.ends, [{ channel: 'lounge', reason: 'disconnected', rejoining: true }]);
  assert.deepEqual(gw.voice.room, { channel: 'lounge', state: 'away', muted: true, rejoin: true, participants: [] });
  // A failed attempt in between changes nothing.
  await clock.advance(250);
  sockets[1].serverClose(1006);
  await clock.advance(500);
  const socket = sockets[2];
  socket.handshake();
  assert.deepEqual(socket.sentOps('voice_join').map((m) => m.d), [{ channel: 'lounge' }], 'joined again as soon as ready');
  assert.deepEqual(socket.sentOps('voice_mute'), []);
  admit(socket, 'lounge', [bob, alice]);
  assert.deepEqual(log.order, ['session:join', 'offer', 'session:rejoin', 'offer']);
  assert.deepEqual(socket.sentOps('voice_mute').map((m) => m.d), [{ channel: 'lounge' }], 'the mute, applied to the new participant');
  assert.equal(gw.voice.room.state, 'joined');
  // A second loss rejoins again.
  socket.serverClose(1012);
  await clock.advance(250);
  sockets[3].handshake();
  assert.equal(sockets[3].sentOps('voice_join').length, 1);
});

test('rejoin: mute and unmute while away are applied by the rejoin; leave while away stops it', async () => {
  const { gw, clock, sockets, log } = await inLounge({ rejoin: true });
  sockets[0].serverClose(1006);
  await gw.voice.mute('lounge'); // resolves at once: nothing to send it on
  assert.equal(gw.voice.room.muted, true);
  await clock.advance(250);
  sockets[1].handshake();
  admit(sockets[1], 'lounge', [alice, bob]);
  assert.deepEqual(sockets[1].sentOps('voice_mute').map((m) => m.d), [{ channel: 'lounge' }]);
  sockets[1].serverClose(1006);
  await gw.voice.leave('lounge');
  assert.deepEqual(log.ends.at(-1), { channel: 'lounge', reason: 'left', rejoining: false });
  await clock.advance(250);
  sockets[2].handshake();
  await settle();
  assert.deepEqual(sockets[2].sentOps('voice_join'), []);
  assert.deepEqual(sockets[2].sentOps('voice_leave'), [], 'the lost connection took the room with it');
});

test('rejoin: refused after the reconnect, the room ends for good with the error', async () => {
  const { gw, clock, sockets, log } = await inLounge({ rejoin: true });
  sockets[0].serverClose(1006);
  await clock.advance(250);
  sockets[1].handshake();
  const [join] = sockets[1].sentOps('voice_join');
  sockets[1].deliver({ op: 'voice_error', d: { code: 'forbidden', message: 'not any more' }, ref: join.ref });
  await settle();
  assert.equal(log.ends.length, 2);
  const end = log.ends[1];
  assert.deepEqual([end.reason, end.rejoining, end.error.code, end.error.channel], ['failed', false, 'forbidden', 'lounge']);
  assert.ok(end.error instanceof VoiceError);
  assert.equal(gw.voice.room, undefined);
});

test('rejoin: lost again before the answer, the next connection tries again', async () => {
  const { clock, sockets, log } = await inLounge({ rejoin: true });
  sockets[0].serverClose(1006);
  await clock.advance(250);
  sockets[1].handshake();
  assert.equal(sockets[1].sentOps('voice_join').length, 1);
  sockets[1].serverClose(1006);
  await clock.advance(250);
  sockets[2].handshake();
  assert.equal(sockets[2].sentOps('voice_join').length, 1);
  admit(sockets[2], 'lounge', [alice]);
  assert.deepEqual(log.sessions.map((s) => s.cause), ['join', 'rejoin']);
  assert.deepEqual(log.ends.map((e) => e.rejoining), [true]);
});

test('close() ends the session for good, rejoin or not; a join in flight rejects closed', async () => {
  const { gw, sockets, log } = await inLounge({ rejoin: true });
  gw.close();
  assert.deepEqual(log.ends, [{ channel: 'lounge', reason: 'disconnected', rejoining: false }]);
  assert.equal(gw.voice.room, undefined);
  gw.connect();
  sockets.at(-1).handshake();
  await settle();
  assert.deepEqual(sockets.at(-1).sentOps('voice_join'), [], 'no rejoin after close()');
  const joining = gw.voice.join('lounge');
  gw.close();
  await assert.rejects(joining, { code: 'closed' });
  assert.equal(gw.voice.room, undefined);
});

test('a join made while disconnected goes out once connected, and is answered there', async () => {
  const { gw, clock, sockets } = harness();
  sockets[0].handshake();
  sockets[0].serverClose(1006);
  const joined = gw.voice.join('lounge');
  assert.equal(gw.voice.room.state, 'joining');
  await clock.advance(250);
  sockets[1].handshake();
  assert.deepEqual(sockets[1].sentOps('voice_join').map((m) => m.d), [{ channel: 'lounge' }]);
  admit(sockets[1], 'lounge', [alice]);
  assert.deepEqual((await joined).participants, [alice]);
});
