/**
 * coregate-client: the client of the coregate WebSocket gateway (PROTOCOL.md v1).
 *
 * ```ts
 * import { Gateway } from 'coregate-client';
 * const gw = new Gateway('wss://chat.example/ws', { getToken });
 * gw.subscribe('channel:42', { recover: true }).on('publication', (ev) => render(ev));
 * ```
 *
 * JSON is built in; `import 'coregate-client/msgpack'` adds MessagePack.
 */
export { Gateway } from './gateway.js';
export type { ConnectionState, GatewayEvents, HistoryOptions, HistoryResult, StateInfo } from './gateway.js';
export type { GatewayOptions } from './options.js';
export { Subscription } from './subscription.js';
export type {
  GapInfo,
  SubscribedInfo,
  SubscribeOptions,
  SubscriptionEvents,
  SubscriptionState,
} from './subscription.js';
export type { GapReason } from './stream-cursor.js';
export { Presence, PresenceWatch } from './presence.js';
export type { PresenceWatchEvents } from './presence.js';
export { Voice } from './voice.js';
export type { VoiceEnd, VoiceEvents, VoiceJoinOptions, VoiceRoom, VoiceRoomState, VoiceSession } from './voice.js';
export { GatewayError, VoiceError } from './errors.js';
export type { LocalErrorCode } from './errors.js';
export { LocalClose } from './close-codes.js';
export type { CloseInfo } from './close-codes.js';
export { jsonCodec, registerCodec } from './codec.js';
export type { Codec } from './codec.js';
export type { Clock, TimerHandle } from './clock.js';
export type { Signal, Signals } from './signals.js';
export type { GetToken } from './token.js';
export type { WebSocketConstructor, WebSocketLike } from './transport.js';
export type { RequestOptions } from './link.js';
export { isPublication, isServerOp } from './protocol.js';
export type * from './protocol.js';
