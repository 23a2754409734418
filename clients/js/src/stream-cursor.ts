/**
 * Recovery bookkeeping for one topic (PROTOCOL.md §6): the position `{offset, epoch}` of the
 * last publication the app got, which a resubscribe sends as `since`. It also guards what the
 * server already promises (in order, none twice) and notices what it cannot: a publication
 * whose offset skips some (a node that dropped events) or whose epoch changed (the stream
 * started again) is a gap, which the app answers by reloading once.
 */
import type { StreamPosition } from './protocol.js';

/** Why the app may have missed publications. */
export type GapReason =
  /** A resubscribe with `since` was answered `recovered: false` (too old, another epoch, no history). */
  | 'not_recovered'
  /** A live publication's epoch is not the one the client knew: the stream started again. */
  | 'epoch_changed'
  /** A live publication's offset skipped some. */
  | 'missed';

/** What to do with one publication. */
export interface Verdict {
  /** False for a publication the app already got (an offset at or below the position). */
  deliver: boolean;
  gap?: GapReason;
}

export class StreamCursor {
  private current: StreamPosition | undefined;

  /** The position of the last publication seen (or where the stream stood at subscribe). */
  get position(): StreamPosition | undefined {
    return this.current;
  }

  /**
   * The server answered `subscribe`: `position` is where the stream stands now
   * (`subscribed.positions`); `recoveredFrom` is the `since` it recovered from, if it did.
   * Recovered: the replay follows and moves the position on from `since`; starting from the
   * server's position instead would make the replay look like copies. Otherwise start from the
   * server's position (none: the topic has no history).
   */
  subscribed(position: StreamPosition | undefined, recoveredFrom?: StreamPosition): void {
    const from = recoveredFrom ?? position;
    this.current = from ? { offset: from.offset, epoch: from.epoch } : undefined;
  }

  /** A publication arrived with this `offset` and `epoch` (none: a topic without history). */
  publication(offset: number | undefined, epoch: string | undefined): Verdict {
    if (offset === undefined || epoch === undefined) return { deliver: true };
    const known = this.current;
    this.current = { offset, epoch };
    if (!known) return { deliver: true };
    if (known.epoch === '' && known.offset === 0) {
      // The topic had no stream when we subscribed; its first publication starts one at 1.
      return offset === 1 ? { deliver: true } : { deliver: true, gap: 'missed' };
    }
    if (epoch !== known.epoch) return { deliver: true, gap: 'epoch_changed' };
    if (offset <= known.offset) {
      this.current = known;
      return { deliver: false };
    }
    return offset === known.offset + 1 ? { deliver: true } : { deliver: true, gap: 'missed' };
  }

  /** The `since` to resubscribe with, if there is a position to recover from. */
  since(): StreamPosition | undefined {
    return this.current ? { ...this.current } : undefined;
  }
}
