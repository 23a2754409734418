// Voice end to end: Chromium's WebRTC stack ↔ coregate's SFU ↔ Chromium. Two pages (two
// users) load the built package, join one voice channel and each runs a real
// RTCPeerConnection with Chromium's fake microphone (voice.html, the README's recipe); each
// must receive the other's audio, none while muted, again once unmuted, and again on new
// peer connections after the gateway restarts and the client rejoins the room.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { launchChromium, startStaticServer } from '../support/browser.mjs';
import { token } from '../support/jwt.mjs';
import { cleanups, GatewayProcess } from '../support/processes.mjs';
import { pause, poll } from '../support/wait.mjs';

const MEDIA_FLAGS = [
  // A microphone without a device or a permission prompt (a beep, encoded as Opus).
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  // WebRTC leaves the loopback interface out of its candidates: on a host whose only
  // interface is loopback (a container, CI) it would have none, and never reach the SFU on
  // 127.0.0.1. (Chrome's mDNS names for host candidates do not matter: the page never sends
  // its candidates, the ICE-lite SFU learns its address from its checks.)
  '--allow-loopback-in-peer-connection',
];

/** Opus frames are 20 ms: 50 packets are a second of audio. */
const PACKETS = 50;

test('Chromium ↔ SFU ↔ Chromium: each page receives the other; mute stops it, unmute brings it back; a rejoin; leave renegotiates', async (t) => {
  const defer = cleanups(t);
  let gateway = await GatewayProcess.start();
  defer(() => gateway.kill());
  const site = await startStaticServer();
  defer(() => site.stop());
  const browser = await launchChromium(MEDIA_FLAGS);
  defer(() => browser.close());

  const pages = {};
  for (const user of ['alice', 'bob']) {
    const page = await (await browser.newContext()).newPage();
    const errors = [];
    page.on('pageerror', (error) => errors.push(error.message));
    await page.goto(`${site.url}voice.html`);
    await page.waitForFunction(() => window.ready === true);
    await page.evaluate(([url, jwt]) => window.startVoice(url, jwt, 'lounge'), [gateway.url, token(user, { topics: ['voice:*'] })]);
    pages[user] = { page, errors };
  }
  const { alice, bob } = pages;
  const inbound = (listener, speaker) => pages[listener].page.evaluate((id) => window.inbound(id), speaker);
  /** Waits until `listener` has received `packets` from `speaker`; the count then. */
  const receives = (listener, speaker, packets, ms = 10_000) =>
    poll(() => inbound(listener, speaker), (got) => got >= packets, ms, `${packets} packets from ${speaker} at ${listener}`);

  // Both hear each other: real Opus from the fake microphones, through the SFU.
  await receives('alice', 'bob', PACKETS);
  await receives('bob', 'alice', PACKETS);
  const log = (user) => pages[user].page.evaluate(() => window.voice);
  assert.deepEqual(Object.keys((await log('alice')).heard), ['bob'], 'alice hears bob, not herself');
  assert.deepEqual(Object.keys((await log('bob')).heard), ['alice']);

  // alice mutes: the SFU stops forwarding her audio to bob (a few packets in flight may still
  // land), while bob's keeps coming to her.
  await alice.page.evaluate(() => window.gw.voice.mute('lounge'));
  await bob.page.waitForFunction(() => window.voice.events.some(([op, id]) => op === 'voice_user_muted' && id === 'alice'));
  await pause(300); // what was already on its way lands
  const mutedAt = await inbound('bob', 'alice');
  const aliceHeard = await inbound('alice', 'bob');
  await pause(1500);
  const whileMuted = (await inbound('bob', 'alice')) - mutedAt;
  assert.ok(whileMuted <= 3, `bob received ${whileMuted} packets from alice in 1.5 s while she was muted`);
  assert.ok((await inbound('alice', 'bob')) - aliceHeard >= PACKETS, 'bob is still heard meanwhile');

  // Unmuted, her audio flows again.
  await alice.page.evaluate(() => window.gw.voice.unmute('lounge'));
  await receives('bob', 'alice', (await inbound('bob', 'alice')) + PACKETS);

  // The gateway is killed and started again on its port: both pages reconnect, join the room
  // again by themselves (rejoin), and hear each other on new peer connections.
  const port = gateway.port;
  await gateway.kill();
  gateway = await GatewayProcess.start([], { listen: `127.0.0.1:${port}` });
  for (const user of ['alice', 'bob']) {
    await pages[user].page.waitForFunction(() => window.voice.sessions.length === 2, undefined, { timeout: 10_000 });
  }
  await receives('alice', 'bob', PACKETS);
  await receives('bob', 'alice', PACKETS);

  // bob leaves: alice's connection is renegotiated (bob's line stopped), and answered.
  const answers = (await log('alice')).answers;
  await bob.page.evaluate(() => window.gw.voice.leave('lounge'));
  await alice.page.waitForFunction(() => window.voice.events.some(([op, id]) => op === 'voice_user_left' && id === 'bob'));
  // Chromium drops a transceiver once its line is stopped: only her microphone's is left.
  const bobsLine = (await log('alice')).heard.bob;
  await alice.page.waitForFunction(
    ([mid, before]) => window.voice.answers > before && window.pc.getTransceivers().every((tr) => tr.mid !== mid),
    [bobsLine, answers],
  );
  assert.equal(await alice.page.evaluate(() => window.pc.getTransceivers().length), 1);

  for (const user of ['alice', 'bob']) {
    const { sessions, errors, failures } = await log(user);
    assert.deepEqual(sessions, ['join', 'rejoin'], user);
    assert.deepEqual(errors, [], `${user}: no voice errors (every answer taken)`);
    assert.deepEqual(failures, [], `${user}: every offer and candidate applied`);
    assert.deepEqual(pages[user].errors, [], `${user}: no page errors`);
  }
  assert.deepEqual((await log('alice')).ends, [['disconnected', true]]);
  assert.deepEqual((await log('bob')).ends, [['disconnected', true], ['left', false]]);
});
