/**
 * Voice channels (PROTOCOL.md §4 "As built: voice"): the signaling, and the room as the app
 * sees it across reconnects. The WebRTC part stays the app's (this package has no WebRTC
 * dependency, and runs where there is none): it makes an `RTCPeerConnection` at every
 * `session` event, answers each `voice_offer` on it with `answer()`, applies the SFU's
 * `voice_ice_candidate` to its first transceiver, and closes it at `end` (the README has the
 * browser recipe).
 *
 * The gateway matches few voice replies by `ref`: a join is answered by the room's
 * `voice_room_state` (matched here by channel), `mute`, `unmute` and `leave` by the room's
 * `voice_user_muted` / `_unmuted` / `_left` about this user. A `voice_error` carries the ref
 * of the op it refuses when the connection's shard refuses it (`forbidden`, `bad_request`,
 * `not_in_room`, `limit`), and none when the SFU does (`room_full`, `unavailable`, `bad_sdp`,
 * `timeout`).
 */
import { Emitter } from './emitter.js';
import { VoiceError, type GatewayError } from './errors.js';
import type { ConnectionState } from './gateway.js';
import type { GatewayLink, RequestOptions } from './link.js';
import type { ClientOp, ServerMessage, ServerMessageOf, ServerOps, VoiceParticipant } from './protocol.js';

export interface VoiceJoinOptions extends RequestOptions {
  /**
   * Join the room again after a reconnect (a connection's end takes it out of the room): the
   * loss is an `end` with `rejoining: true`, and the rejoin a `session` with `cause: 'rejoin'`.
   * A mute is kept. Default false.
   */
  rejoin?: boolean;
}

export type VoiceRoomState =
  /** `voice_join` sent (or waiting for a connection to send it on), no `voice_room_state` yet. */
  | 'joining'
  /** In the room, on the current connection. */
  | 'joined'
  /** The connection was lost; joining again once it is back (`rejoin`). */
  | 'away';

/** The room this connection is in, or joining, as the client knows it. */
export interface VoiceRoom {
  channel: string;
  state: VoiceRoomState;
  /** Everyone in it, this user included: the last `voice_room_state`, and the events since. */
  participants: VoiceParticipant[];
  /** Whether the app muted itself (sent again after a rejoin). */
  muted: boolean;
  rejoin: boolean;
}

/** The `session` event: a new WebRTC session starts. */
export interface VoiceSession {
  channel: string;
  participants: VoiceParticipant[];
  /** `join`: the app's join; `rejoin`: after a reconnect; `moved`: the room moved to another node. */
  cause: 'join' | 'rejoin' | 'moved';
}

/** The `end` event: the session is over. */
export interface VoiceEnd {
  channel: string;
  /**
   * `left`: `leave()`, or a join of another channel; `disconnected`: the connection ended;
   * `failed`: the WebRTC session failed (`timeout`), or a rejoin was refused (`error` says why).
   */
  reason: 'left' | 'disconnected' | 'failed';
  /** The client joins again once connected: a `session` follows, or an `end` without `rejoining`. */
  rejoining: boolean;
  error?: GatewayError;
}

export type VoiceEvents = {
  /**
   * A new WebRTC session: close any previous `RTCPeerConnection` and answer the next
   * `voice_offer` with a new one. Emitted before the offer is, in the same task, so a
   * connection made in the listener is there for it (an `await join()` resumes too late).
   */
  session: [session: VoiceSession];
  /** The session ended: close the `RTCPeerConnection`. */
  end: [end: VoiceEnd];
  /** A `voice_error` that refuses none of the app's requests: `bad_sdp` (an answer or candidate), `unavailable`. */
  error: [error: VoiceError];
};

/** The events about this user that confirm `mute`, `unmute` and `leave`. */
type Confirmation = 'voice_user_muted' | 'voice_user_unmuted' | 'voice_user_left';

/** SFU refusals without a `ref` that can only be a join's. */
const JOIN_REFUSALS: ReadonlySet<string> = new Set(['room_full', 'unavailable', 'limit']);

interface Room extends VoiceRoom {
  /** The ref of the rejoin in flight. */
  rejoinRef?: number | undefined;
}

export class Voice extends Emitter<VoiceEvents> {
  private current: Room | undefined;
  /** Joins waiting for their room's state, by channel. */
  private readonly joins = new Map<string, Set<number>>();
  /** `mute`, `unmute`, `leave` waiting for their confirmation, by `<confirmation> <channel>`. */
  private readonly confirmations = new Map<string, Set<number>>();

  /**
   * @internal Made by the gateway before the app can listen to it, so that the room is up to
   * date when the app's listeners of the same messages run.
   */
  constructor(private readonly link: GatewayLink) {
    super();
    link.on('state', (state) => this.connectionState(state));
    link.on('voice_room_state', (message) => this.roomState(message));
    link.on('voice_user_joined', ({ d }) => {
      const room = this.joinedRoom(d.channel);
      const participant: VoiceParticipant = { user_id: d.user_id, muted: false };
      if (d.name !== undefined) participant.name = d.name;
      room?.participants.push(participant);
    });
    link.on('voice_user_left', (message) => {
      this.confirm(message);
      const participants = this.joinedRoom(message.d.channel)?.participants;
      const at = participants?.findIndex((p) => p.user_id === message.d.user_id) ?? -1;
      if (at >= 0) participants?.splice(at, 1);
    });
    link.on('voice_user_muted', (message) => this.userMuted(message, true));
    link.on('voice_user_unmuted', (message) => this.userMuted(message, false));
    link.on('voice_error', (message) => this.voiceError(message));
  }

  /** The room this connection is in or joining (a copy), if any. */
  get room(): VoiceRoom | undefined {
    const room = this.current;
    if (!room) return undefined;
    const { channel, state, muted, rejoin } = room;
    return { channel, state, muted, rejoin, participants: room.participants.map((p) => ({ ...p })) };
  }

  /**
   * Joins `channel` (the token's `topics` must allow `voice:<channel>`), leaving the room the
   * connection was in; joining the room it is in starts a new session. Resolves with the
   * room's state, after the `session` event; the SFU's `voice_offer` follows. Rejects with a
   * {@link VoiceError} (`forbidden`, `room_full`, …) or a request's `timeout`,
   * `disconnected`, `closed`.
   */
  async join(channel: string, options: VoiceJoinOptions = {}): Promise<ServerOps['voice_room_state']> {
    const previous = this.current;
    const room: Room = { channel, state: 'joining', participants: [], muted: false, rejoin: options.rejoin ?? false };
    this.current = room;
    if (previous && previous.channel !== channel) this.ended(previous, 'left', false);
    const { ref, reply } = this.link.startRequest('voice_join', { channel }, options);
    track(this.joins, channel, ref);
    try {
      return ((await reply) as ServerMessageOf<'voice_room_state'>).d;
    } catch (error) {
      if (this.current === room && room.state === 'joining') this.current = undefined;
      throw inChannel(error, channel);
    } finally {
      untrack(this.joins, channel, ref);
    }
  }

  /**
   * Leaves `channel`: an `end` at once; resolves when the room confirms (`voice_user_left`).
   * Rejects `not_in_room` if the connection is not in it. After a lost connection there is
   * nothing to leave: it resolves at once (and stops a rejoin).
   */
  async leave(channel: string, options: RequestOptions = {}): Promise<void> {
    const room = this.current?.channel === channel ? this.current : undefined;
    if (room) {
      this.current = undefined;
      this.ended(room, 'left', false);
      if (room.state === 'away' && this.link.state !== 'connected') return;
    }
    await this.confirmed('voice_leave', 'voice_user_left', channel, options);
  }

  /**
   * Stops the SFU forwarding this user's audio to the room (the microphone still sends:
   * disable the track too to save the bandwidth). Resolves when the room confirms
   * (`voice_user_muted`, which everyone gets). Kept across a rejoin.
   */
  mute(channel: string, options: RequestOptions = {}): Promise<void> {
    return this.setMuted(channel, true, options);
  }

  unmute(channel: string, options: RequestOptions = {}): Promise<void> {
    return this.setMuted(channel, false, options);
  }

  /** The app's SDP answer to a `voice_offer` (on the connection that offer came on); false when not connected. */
  answer(channel: string, sdp: string): boolean {
    return this.link.send('voice_answer', { channel, sdp });
  }

  /**
   * One of the app's ICE candidates (an `RTCIceCandidate`, or its `candidate:` line); optional,
   * since the ICE-lite SFU learns the app's address from its checks. False when nothing was
   * sent: not connected, or the end of candidates (`null`, an empty line).
   */
  candidate(channel: string, candidate: string | { candidate: string } | null): boolean {
    const line = typeof candidate === 'string' ? candidate : (candidate?.candidate ?? '');
    if (line === '') return false;
    return this.link.send('voice_ice_candidate', { channel, candidate: line });
  }

  private async setMuted(channel: string, muted: boolean, options: RequestOptions): Promise<void> {
    const room = this.current?.channel === channel ? this.current : undefined;
    if (room) room.muted = muted;
    if (room?.state === 'away') return; // the rejoin applies it
    const [op, confirmation] = muted
      ? (['voice_mute', 'voice_user_muted'] as const)
      : (['voice_unmute', 'voice_user_unmuted'] as const);
    await this.confirmed(op, confirmation, channel, options);
  }

  /** Sends `op` and waits for the room's `confirmation` about this user. */
  private async confirmed(
    op: Extract<ClientOp, 'voice_mute' | 'voice_unmute' | 'voice_leave'>,
    confirmation: Confirmation,
    channel: string,
    options: RequestOptions,
  ): Promise<void> {
    const key = `${confirmation} ${channel}`;
    const { ref, reply } = this.link.startRequest(op, { channel }, options);
    track(this.confirmations, key, ref);
    try {
      await reply;
    } catch (error) {
      throw inChannel(error, channel);
    } finally {
      untrack(this.confirmations, key, ref);
    }
  }

  /** A room's event about this user settles what waits for it. */
  private confirm(message: ServerMessageOf<Confirmation>): void {
    if (message.d.user_id !== this.link.userId) return;
    const refs = this.confirmations.get(`${message.op} ${message.d.channel}`);
    for (const ref of [...(refs ?? [])]) this.link.settle(ref, message as ServerMessage);
  }

  private userMuted(message: ServerMessageOf<'voice_user_muted' | 'voice_user_unmuted'>, muted: boolean): void {
    this.confirm(message);
    const participant = this.joinedRoom(message.d.channel)?.participants.find(
      (p) => p.user_id === message.d.user_id && p.muted !== muted,
    );
    if (participant) participant.muted = muted;
  }

  /** A session starts: the app's join, a rejoin, or the room moved to another node. */
  private roomState(message: ServerMessageOf<'voice_room_state'>): void {
    const { channel, participants } = message.d;
    for (const ref of [...(this.joins.get(channel) ?? [])]) this.link.settle(ref, message);
    const room = this.current;
    if (!room || room.channel !== channel) return; // a join given up on, or left since
    const cause = room.state === 'joining' ? 'join' : room.state === 'away' ? 'rejoin' : 'moved';
    room.state = 'joined';
    room.rejoinRef = undefined;
    room.participants = participants.map((p) => ({ ...p }));
    // A new participant starts unmuted; the app's own join sends its mute itself.
    const me = participants.find((p) => p.user_id === this.link.userId);
    if (cause !== 'join' && room.muted && me && !me.muted) this.link.send('voice_mute', { channel });
    this.emit('session', { channel, participants: participants.map((p) => ({ ...p })), cause });
  }

  private voiceError(message: ServerMessageOf<'voice_error'>): void {
    if (message.ref !== undefined) return; // it refused a request, which rejects with it
    const { code, message: text } = message.d;
    if (JOIN_REFUSALS.has(code) && this.joins.size > 0) {
      for (const [channel, refs] of [...this.joins]) {
        for (const ref of [...refs]) this.link.settle(ref, new VoiceError(code, text, channel));
      }
      return;
    }
    const room = this.current;
    const error = new VoiceError(code, text, room?.channel);
    // The SFU gave up on the session (and takes the participant out). One that comes while
    // joining is the previous session's.
    if (code === 'timeout' && room?.state === 'joined') {
      this.current = undefined;
      this.ended(room, 'failed', false, error);
      return;
    }
    this.emit('error', error);
  }

  private connectionState(state: ConnectionState): void {
    const room = this.current;
    if (!room) return;
    if (state === 'connected') {
      if (room.state === 'away' && room.rejoinRef === undefined) this.rejoin(room);
      return;
    }
    // A join in flight or waiting is rejected `disconnected` or `closed`, and forgets the room.
    if (room.state === 'joining') return;
    if (state === 'closed') {
      this.current = undefined;
      this.ended(room, 'disconnected', false);
    } else if (room.state === 'joined') {
      if (room.rejoin) {
        room.state = 'away';
        room.participants = [];
      } else {
        this.current = undefined;
      }
      this.ended(room, 'disconnected', room.rejoin);
    }
  }

  private rejoin(room: Room): void {
    const { ref, reply } = this.link.startRequest('voice_join', { channel: room.channel });
    room.rejoinRef = ref;
    track(this.joins, room.channel, ref);
    reply.then(
      () => untrack(this.joins, room.channel, ref),
      (error: GatewayError) => {
        untrack(this.joins, room.channel, ref);
        if (this.current !== room || room.rejoinRef !== ref) return;
        room.rejoinRef = undefined;
        if (error.code === 'disconnected' && !(error instanceof VoiceError)) {
          // Lost again before the answer: the next connection tries again.
          if (this.link.state === 'connected') this.rejoin(room);
          return;
        }
        this.current = undefined;
        this.ended(room, 'failed', false, inChannel(error, room.channel) as GatewayError);
      },
    );
  }

  /** An `end`, for a room that had a session, or was waiting to get one back. */
  private ended(room: Room, reason: VoiceEnd['reason'], rejoining: boolean, error?: GatewayError): void {
    if (room.state === 'joining') return;
    const end: VoiceEnd = { channel: room.channel, reason, rejoining };
    if (error) end.error = error;
    this.emit('end', end);
  }

  /** The room `channel`, if the connection is in it. */
  private joinedRoom(channel: string): Room | undefined {
    const room = this.current;
    return room?.channel === channel && room.state === 'joined' ? room : undefined;
  }
}

/** A voice error of a request about `channel` says so (the server's does not). */
function inChannel(error: unknown, channel: string): unknown {
  return error instanceof VoiceError && error.channel === undefined
    ? new VoiceError(error.code, error.message, channel)
    : error;
}

function track(waiting: Map<string, Set<number>>, key: string, ref: number): void {
  const refs = waiting.get(key);
  if (refs) refs.add(ref);
  else waiting.set(key, new Set([ref]));
}

function untrack(waiting: Map<string, Set<number>>, key: string, ref: number): void {
  const refs = waiting.get(key);
  refs?.delete(ref);
  if (refs?.size === 0) waiting.delete(key);
}
