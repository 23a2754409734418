/**
 * Voice signaling (PROTOCOL.md §4–§5), as messages only: the app owns the `RTCPeerConnection`
 * (the browser's), feeds it the server's `voice_offer` and `voice_ice_candidate` events, and
 * sends back its answer and candidates through these methods.
 */
import { GatewayError } from './errors.js';
import type { GatewayLink, RequestOptions } from './link.js';
import type { ServerMessageOf, ServerOps } from './protocol.js';

export class Voice {
  /** `voice_join`s waiting for their room's state, by channel. */
  private readonly joins = new Map<string, number[]>();

  /** @internal */
  constructor(private readonly link: GatewayLink) {
    // The room's state answers a join whether or not the server echoes its `ref`.
    link.on('voice_room_state', (message) => {
      for (const ref of this.joins.get(message.d.channel) ?? []) link.settle(ref, message);
      this.joins.delete(message.d.channel);
    });
    link.on('voice_error', (message) => {
      const error = new GatewayError(message.d.code, message.d.message);
      for (const refs of this.joins.values()) refs.forEach((ref) => link.settle(ref, error));
      this.joins.clear();
    });
  }

  /**
   * Joins `channel`: resolves with the room's participants; the server's `voice_offer` follows,
   * as an event. Rejects on an `error` or `voice_error`.
   */
  async join(channel: string, options: RequestOptions = {}): Promise<ServerOps['voice_room_state']> {
    const { ref, reply } = this.link.startRequest('voice_join', { channel }, options);
    this.joins.set(channel, [...(this.joins.get(channel) ?? []), ref]);
    try {
      return ((await reply) as ServerMessageOf<'voice_room_state'>).d;
    } finally {
      const rest = (this.joins.get(channel) ?? []).filter((r) => r !== ref);
      if (rest.length > 0) this.joins.set(channel, rest);
      else this.joins.delete(channel);
    }
  }

  leave(channel: string): boolean {
    return this.link.send('voice_leave', { channel });
  }

  /** The app's SDP answer to a `voice_offer`. */
  answer(channel: string, sdp: string): boolean {
    return this.link.send('voice_answer', { channel, sdp });
  }

  /** One of the app's ICE candidates (`RTCIceCandidate.toJSON()`). */
  iceCandidate(channel: string, candidate: unknown): boolean {
    return this.link.send('voice_ice_candidate', { channel, candidate });
  }

  mute(channel: string): boolean {
    return this.link.send('voice_mute', { channel });
  }

  unmute(channel: string): boolean {
    return this.link.send('voice_unmute', { channel });
  }
}
