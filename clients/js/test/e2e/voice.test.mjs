// Voice signaling against a real gateway and its SFU. Node has no WebRTC stack, so no media
// flows here (the browser test has Chromium's): the clients answer every offer with an SDP
// answer written for it (support/sdp.mjs), which the SFU takes, so that it renegotiates on
// every join and leave as it does for a real peer.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { VoiceError } from '../../dist/index.js';
import { connect } from '../support/clients.mjs';
import { token } from '../support/jwt.mjs';
import { GatewayProcess } from '../support/processes.mjs';
import { AnsweringPeer, candidates, mediaSections } from '../support/sdp.mjs';
import { next, state, until } from '../support/wait.mjs';

/** A client allowed in every voice channel, that answers every offer; what it saw. */
async function voiceUser(t, url, user, { topics = ['voice:*'], ...options } = {}) {
  const gw = await connect(t, url, user, { token: token(user, { topics }), ...options });
  const seen = { offers: [], candidates: [], sessions: [], ends: [], errors: [], ops: [] };
  gw.on('event', (m) => m.op.startsWith('voice_') && seen.ops.push([m.op, m.d.user_id ?? m.d.code ?? null]));
  // A new peer per session, as an app makes a new RTCPeerConnection.
  let peer;
  gw.voice.on('session', () => (peer = new AnsweringPeer()));
  gw.on('voice_offer', (m) => {
    seen.offers.push(m.d);
    gw.voice.answer(m.d.channel, peer.answer(m.d.sdp));
  });
  gw.on('voice_ice_candidate', (m) => seen.candidates.push(m.d));
  gw.voice.on('session', (s) => seen.sessions.push(s));
  gw.voice.on('end', (e) => seen.ends.push(e));
  gw.voice.on('error', (e) => seen.errors.push(e));
  return { gw, seen };
}

const participant = (user, muted = false) => ({ user_id: user, name: user.toUpperCase(), muted });

test('voice: join, a second user, mute, leave: the room state, the offers, the candidate and the room events', async (t) => {
  const gateway = await GatewayProcess.start();
  t.after(() => gateway.kill());
  const alice = await voiceUser(t, gateway.url, 'alice');
  const bob = await voiceUser(t, gateway.url, 'bob', { encoding: 'msgpack' });

  // alice alone: her room, then the SFU's offer (her microphone's line) and its candidate.
  assert.deepEqual(await alice.gw.voice.join('lounge'), { channel: 'lounge', participants: [participant('alice')] });
  assert.deepEqual(alice.seen.sessions, [{ channel: 'lounge', participants: [participant('alice')], cause: 'join' }]);
  await until(alice.gw, 'voice_ice_candidate', () => alice.seen.candidates.length === 1);
  const [first] = alice.seen.offers;
  assert.deepEqual(mediaSections(first.sdp).map((s) => [s.direction, s.msid]), [['recvonly', 'alice']]);
  const [candidate] = alice.seen.candidates;
  assert.equal(candidate.channel, 'lounge');
  assert.match(candidate.candidate, /^candidate:\S+ 1 udp \d+ 127\.0\.0\.1 \d+ typ host/);
  assert.ok(candidates(first.sdp).some((line) => line.startsWith(candidate.candidate)), 'the same candidate is in the offer');

  // bob joins: alice is told and renegotiated, with a line that carries bob's audio.
  const bobJoined = bob.gw.voice.join('lounge');
  const [joined] = await next(alice.gw, 'voice_user_joined');
  assert.deepEqual(joined.d, { channel: 'lounge', user_id: 'bob', name: 'BOB' });
  assert.deepEqual((await bobJoined).participants, [participant('alice'), participant('bob')]);
  await until(alice.gw, 'voice_offer', () => alice.seen.offers.length === 2);
  assert.deepEqual(mediaSections(alice.seen.offers[1].sdp).map((s) => [s.direction, s.msid]), [['recvonly', 'alice'], ['sendonly', 'bob']]);
  assert.deepEqual(alice.gw.voice.room.participants, [participant('alice'), participant('bob')]);
  await until(bob.gw, 'voice_offer', () => bob.seen.offers.length === 1);
  assert.deepEqual(mediaSections(bob.seen.offers[0].sdp).map((s) => [s.direction, s.msid]), [['recvonly', 'bob'], ['sendonly', 'alice']]);

  // bob mutes: everyone is told, bob too (which is what resolves his mute).
  const aliceHearsMute = next(alice.gw, 'voice_user_muted');
  await bob.gw.voice.mute('lounge');
  assert.deepEqual((await aliceHearsMute)[0].d, { channel: 'lounge', user_id: 'bob' });
  assert.deepEqual(alice.gw.voice.room.participants, [participant('alice'), participant('bob', true)]);
  assert.equal(bob.gw.voice.room.muted, true);
  const aliceHearsUnmute = next(alice.gw, 'voice_user_unmuted');
  await bob.gw.voice.unmute('lounge');
  assert.deepEqual((await aliceHearsUnmute)[0].d, { channel: 'lounge', user_id: 'bob' });

  // bob leaves: alice is told and renegotiated with bob's line stopped.
  const offersBefore = alice.seen.offers.length;
  const aliceHearsLeave = next(alice.gw, 'voice_user_left');
  await bob.gw.voice.leave('lounge');
  assert.deepEqual(bob.seen.ends, [{ channel: 'lounge', reason: 'left', rejoining: false }]);
  assert.deepEqual((await aliceHearsLeave)[0].d, { channel: 'lounge', user_id: 'bob', name: 'BOB' });
  await until(alice.gw, 'voice_offer', () => alice.seen.offers.length === offersBefore + 1);
  assert.deepEqual(mediaSections(alice.seen.offers.at(-1).sdp).map((s) => s.port === 0), [false, true]);
  assert.deepEqual(alice.gw.voice.room.participants, [participant('alice')]);
  await assert.rejects(bob.gw.voice.mute('lounge'), { name: 'VoiceError', code: 'not_in_room' });

  // Every answer was taken.
  assert.deepEqual([...alice.seen.errors, ...bob.seen.errors], []);
  assert.deepEqual(alice.seen.ends, []);
});

test('voice refusals: forbidden, bad_request, not_in_room by the ref of the op; bad_sdp as an error event', async (t) => {
  const gateway = await GatewayProcess.start();
  t.after(() => gateway.kill());
  const { gw, seen } = await voiceUser(t, gateway.url, 'alice', { topics: ['voice:team-*'] });
  await assert.rejects(gw.voice.join('lounge'), (error) => {
    assert.ok(error instanceof VoiceError);
    assert.deepEqual([error.code, error.channel], ['forbidden', 'lounge']);
    assert.match(error.message, /not allowed/);
    return true;
  });
  await assert.rejects(gw.voice.join('team 1'), { name: 'VoiceError', code: 'bad_request' });
  await assert.rejects(gw.voice.mute('team-1'), { name: 'VoiceError', code: 'not_in_room' });
  await assert.rejects(gw.voice.leave('team-1'), { name: 'VoiceError', code: 'not_in_room' });
  assert.equal(gw.voice.room, undefined);
  // Allowed by the token's pattern.
  await gw.voice.join('team-1');
  const refused = next(gw.voice, 'error');
  assert.equal(gw.voice.answer('team-1', 'not an answer'), true);
  const [error] = await refused;
  assert.deepEqual([error.code, error.channel], ['bad_sdp', 'team-1']);
  assert.equal(gw.voice.room.state, 'joined', 'a bad answer leaves the session as it was');
  assert.equal(gw.state, 'connected');
  assert.deepEqual(seen.ends, []);
});

test("voice: the SFU's own refusals reject the join: room_full, and unavailable with voice off", async (t) => {
  const small = await GatewayProcess.start(['--voice-room-size', '2']);
  t.after(() => small.kill());
  const [alice, bob, carol] = await Promise.all(['alice', 'bob', 'carol'].map((user) => voiceUser(t, small.url, user)));
  await alice.gw.voice.join('lounge');
  await bob.gw.voice.join('lounge');
  await assert.rejects(carol.gw.voice.join('lounge'), { name: 'VoiceError', code: 'room_full', channel: 'lounge' });
  assert.equal(carol.gw.voice.room, undefined);
  // The refused join holds nothing: carol can join another room.
  await carol.gw.voice.join('studio');

  const off = await GatewayProcess.start(['--voice', 'false']);
  t.after(() => off.kill());
  const dave = await voiceUser(t, off.url, 'dave');
  await assert.rejects(dave.gw.voice.join('lounge'), { name: 'VoiceError', code: 'unavailable', channel: 'lounge' });
});

test('voice rejoin: the gateway restarts, the client joins the room again, with its mute', async (t) => {
  let gateway = await GatewayProcess.start();
  t.after(() => gateway.kill());
  const port = gateway.port;
  const alice = await voiceUser(t, gateway.url, 'alice');
  await alice.gw.voice.join('lounge', { rejoin: true });
  await alice.gw.voice.mute('lounge');
  const firstOffer = alice.seen.offers.length;

  await gateway.kill();
  await state(alice.gw, 'disconnected');
  assert.deepEqual(alice.seen.ends, [{ channel: 'lounge', reason: 'disconnected', rejoining: true }]);
  assert.equal(alice.gw.voice.room.state, 'away');
  gateway = await GatewayProcess.start([], { listen: `127.0.0.1:${port}` });

  await until(alice.gw.voice, 'session', () => alice.seen.sessions.length === 2, 10_000);
  assert.deepEqual(alice.seen.sessions[1], { channel: 'lounge', participants: [participant('alice')], cause: 'rejoin' });
  // The new session's offer, and the mute applied to the new participant.
  await until(alice.gw, 'voice_offer', () => alice.seen.offers.length > firstOffer);
  await until(alice.gw, 'voice_user_muted', () => alice.gw.voice.room.participants[0].muted);
  const bob = await voiceUser(t, gateway.url, 'bob');
  assert.deepEqual((await bob.gw.voice.join('lounge')).participants, [participant('alice', true), participant('bob')]);
  assert.deepEqual(alice.seen.errors, []);
});
