/**
 * The wire protocol's messages (PROTOCOL.md §2, §4, §5), as types.
 *
 * Every message is a map with `op`, and `d`, `ref`, `topic`, `offset`, `epoch` where they
 * apply; the same keys in JSON and MessagePack. Server messages are a union discriminated by
 * `op`, so that `gw.on('presence_update', ev => ev.d.status)` is typed; anything the backend
 * publishes (`message_new`, …) is a {@link Publication}.
 */

/** Where a topic's stream stands: the offset of its last publication, in one epoch (§6). */
export interface StreamPosition {
  offset: number;
  epoch: string;
}

/** A user's presence status; `offline` is only ever read, never set. */
export type PresenceStatus = 'online' | 'away' | 'busy' | 'invisible' | 'offline';

/** The statuses `presence_set` accepts. */
export type SettableStatus = Exclude<PresenceStatus, 'offline'>;

/** One user's presence, in `presence_state` and `presence_update`. */
export interface PresenceUser {
  user_id: string;
  status: PresenceStatus;
  /** When the status changed, in ms since the Unix epoch (0 once forgotten). */
  since: number;
}

/** A publication as `history` returns it. */
export interface HistoryPublication {
  op: string;
  d: unknown;
  offset: number;
}

/** `voice_error.d.code` (PROTOCOL.md §7). */
export type VoiceErrorCode =
  /** The token's `topics` do not allow `voice:<channel>`. */
  | 'forbidden'
  /** A channel id that makes no topic. */
  | 'bad_request'
  /** The room holds `--voice-room-size` participants already. */
  | 'room_full'
  /** An answer or candidate the SFU cannot use (the session stays). */
  | 'bad_sdp'
  /** A voice op for a room this connection is not in. */
  | 'not_in_room'
  /** The WebRTC session did not come up within 20 s of the join, or failed later (ICE, DTLS). */
  | 'timeout'
  /** Voice is off on the gateway, or its SFU is overloaded. */
  | 'unavailable'
  /** The room's topic does not fit the connection's `--max-subscriptions`. */
  | 'limit';

/** A voice room participant (§5 `voice_room_state`). */
export interface VoiceParticipant {
  user_id: string;
  name?: string;
  muted: boolean;
}

// ---- client → server (§4) ----------------------------------------------------------------

/** The payload of each client op. */
export interface ClientOps {
  identify: { token: string };
  refresh: { token: string };
  ping: undefined;
  subscribe: { topics: string[]; since?: Record<string, StreamPosition> };
  unsubscribe: { topics: string[] };
  typing_start: { topic: string };
  typing_stop: { topic: string };
  presence_set: { status: SettableStatus };
  presence_query: { user_ids: string[] };
  history: { topic: string; limit?: number; since?: StreamPosition };
  rpc: { method: string; d?: unknown };
  voice_join: { channel: string };
  voice_leave: { channel: string };
  voice_answer: { channel: string; sdp: string };
  /** One of the client's candidates, an SDP `candidate:` line (`RTCIceCandidate.candidate`). */
  voice_ice_candidate: { channel: string; candidate: string };
  voice_mute: { channel: string };
  voice_unmute: { channel: string };
}

export type ClientOp = keyof ClientOps;

/** A message the client sends. */
export interface ClientMessage<Op extends ClientOp = ClientOp> {
  op: Op;
  d?: ClientOps[Op];
  ref?: number;
}

// ---- server → client (§5) ----------------------------------------------------------------

/** The payload of each server op the protocol names. */
export interface ServerOps {
  hello: { session_id: string; heartbeat_interval_ms: number };
  ready: { user_id: string; session_id: string; topics: string[]; data?: unknown };
  refreshed: { exp: number };
  pong: undefined;
  subscribed: {
    topics: string[];
    positions?: Record<string, StreamPosition>;
    recovered?: Record<string, boolean>;
  };
  unsubscribed: { topics: string[] };
  history: { topic: string; publications: HistoryPublication[]; offset: number; epoch: string };
  error: { code: string; message: string; topics?: string[]; retry_after_ms?: number };
  typing_start: { user_id: string; name?: string };
  typing_stop: { user_id: string; name?: string };
  presence_update: PresenceUser;
  presence_state: { users: PresenceUser[] };
  rpc_result: { d: unknown };
  reconnect: { reason: string; retry_after_ms: number };
  voice_offer: { channel: string; sdp: string };
  /** The SFU's host candidate, an SDP `candidate:` line, for the offer's first m-line (bundled). */
  voice_ice_candidate: { channel: string; candidate: string };
  voice_user_joined: { channel: string; user_id: string; name?: string };
  voice_user_left: { channel: string; user_id: string; name?: string };
  voice_user_muted: { channel: string; user_id: string };
  voice_user_unmuted: { channel: string; user_id: string };
  voice_room_state: { channel: string; participants: VoiceParticipant[] };
  voice_error: { code: VoiceErrorCode; message: string };
}

export type ServerOp = keyof ServerOps;

/** A server message of a protocol op. `topic` is set on topic events (typing, presence). */
export type ServerMessageOf<Op extends ServerOp> = {
  op: Op;
  d: ServerOps[Op];
  ref?: number;
  topic?: string;
};

/** Any protocol op's message, discriminated by `op`. */
export type KnownServerMessage = { [Op in ServerOp]: ServerMessageOf<Op> }[ServerOp];

/**
 * What the backend published on a topic (§6): any op that is not a protocol op. Topics with
 * history add the publication's `offset` and the stream's `epoch`.
 */
export interface Publication<D = unknown> {
  op: string;
  d: D;
  topic: string;
  offset?: number;
  epoch?: string;
}

/** Every server message. */
export type ServerMessage = KnownServerMessage | Publication;

const SERVER_OPS: ReadonlySet<string> = new Set<ServerOp>([
  'hello', 'ready', 'refreshed', 'pong', 'subscribed', 'unsubscribed', 'history', 'error',
  'typing_start', 'typing_stop', 'presence_update', 'presence_state', 'rpc_result',
  'reconnect', 'voice_offer', 'voice_ice_candidate', 'voice_user_joined', 'voice_user_left',
  'voice_user_muted', 'voice_user_unmuted', 'voice_room_state', 'voice_error',
]);

/** Whether `op` is one of the protocol's server ops (anything else is a publication). */
export function isServerOp(op: string): op is ServerOp {
  return SERVER_OPS.has(op);
}

/**
 * Whether `message` is a backend publication: a topic event whose op is not the protocol's.
 * (`typing_*` and `presence_update` carry a topic too, but are the gateway's own events.)
 */
export function isPublication(message: ServerMessage): message is Publication {
  return typeof message.topic === 'string' && !isServerOp(message.op);
}
