"""Voice channels with aiortc, a WebRTC stack nobody on this project wrote.

Real aiortc peers join a room through a real gateway's WebSocket (the JSON protocol),
answer the SFU's offers, send Opus (a generated 440 Hz tone, encoded by aiortc) over
loopback UDP, and decode what the SFU forwards: two and then three users each hear the
others; mute stops forwarding; a leave tells the room and renegotiates it.

Run: COREGATE_BIN=target/debug/coregate python3 -m unittest discover -s tests/voice_aiortc -v
(`./test.sh` does, after `cargo build`). Needs `pip install aiortc websockets`.
"""

import array
import asyncio
import base64
import hashlib
import hmac
import json
import math
import os
import subprocess
import time
import unittest

import aioice.ice
import websockets
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError

# Media over loopback: aioice leaves 127.0.0.1 out of its host candidates, and a test
# box may have no other interface.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARY = os.environ.get("COREGATE_BIN", os.path.join(ROOT, "target", "debug", "coregate"))
SECRET = "aiortc-test-secret-0123456789"
WAIT = 10.0


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(sub: str, topics: list[str]) -> str:
    """An HS256 JWT, as an application backend signs it."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"sub": sub, "exp": int(time.time()) + 3600, "topics": topics}
    payload = b64url(json.dumps(claims).encode())
    signature = hmac.new(SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256)
    return f"{header}.{payload}.{b64url(signature.digest())}"


class Gateway:
    """A coregate process on free loopback ports."""

    def __init__(self):
        self.process = subprocess.Popen(
            [BINARY, "serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
             "--jwt-secret", SECRET, "--shards", "2"],
            stdout=subprocess.PIPE, env={**os.environ, "RUST_LOG": os.environ.get("GATEWAY_LOG", "warn")}, text=True)
        line = self.process.stdout.readline()
        fields = dict(f.split("=", 1) for f in line.split()[1:])
        self.ws = fields["ws"]

    def stop(self):
        self.process.kill()
        self.process.wait()
        self.process.stdout.close()


class Tone(AudioStreamTrack):
    """A 440 Hz sine, in aiortc's paced 20 ms frames (aiortc encodes it as Opus)."""

    def __init__(self):
        super().__init__()
        self.phase = 0

    async def recv(self):
        frame = await super().recv()  # a silent frame, paced like a microphone
        rate, start = frame.sample_rate, self.phase
        self.phase += frame.samples
        samples = array.array("h", (int(8000 * math.sin(2 * math.pi * 440 * (start + i) / rate))
                                    for i in range(frame.samples)))
        frame.planes[0].update(samples.tobytes())
        return frame


def streams_by_mid(sdp: str) -> dict[str, str]:
    """mid -> msid stream id of every m-line (the SFU names the speaker there)."""
    streams, mid = {}, None
    for line in sdp.splitlines():
        if line.startswith("m="):
            mid = None
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:"):].strip()
        elif line.startswith("a=msid:") and mid is not None:
            streams[mid] = line[len("a=msid:"):].split()[0]
    return streams


class VoiceUser:
    """One user: a WebSocket to the gateway and an aiortc peer connection per session."""

    def __init__(self, user_id: str):
        self.user_id = user_id
        self.messages: list[dict] = []
        self.frames: dict[str, int] = {}
        self.pc: RTCPeerConnection | None = None
        self.streams: dict[str, str] = {}
        self.tasks: list[asyncio.Task] = []

    async def connect(self, gateway: Gateway):
        url = f"ws://{gateway.ws}/ws?token={token(self.user_id, ['voice:*'])}"
        self.ws = await websockets.connect(url, subprotocols=["coregate.v1.json"])
        self.tasks.append(asyncio.create_task(self.read()))
        await self.wait_op("ready")

    async def send(self, op: str, **d):
        await self.ws.send(json.dumps({"op": op, "d": d}))

    async def read(self):
        async for frame in self.ws:
            for text in frame.split("\n"):
                message = json.loads(text)
                self.messages.append(message)
                if message["op"] == "voice_room_state":
                    await self.new_session()
                elif message["op"] == "voice_offer":
                    await self.answer(message["d"])
                elif message["op"] == "voice_ice_candidate":
                    await self.add_candidate(message["d"]["candidate"])

    async def new_session(self):
        if self.pc is not None:
            await self.pc.close()
        self.pc = RTCPeerConnection()
        # Matched to the offer's first audio line, the one the SFU receives on.
        self.pc.addTrack(Tone())
        self.pc.on("track", self.on_track)

    def on_track(self, track):
        mid = next(t.mid for t in self.pc.getTransceivers() if t.receiver.track is track)
        speaker = self.streams.get(mid, "?")
        self.tasks.append(asyncio.create_task(self.count(speaker, track)))

    async def count(self, speaker: str, track):
        try:
            while True:
                await track.recv()
                self.frames[speaker] = self.frames.get(speaker, 0) + 1
        except MediaStreamError:
            return

    async def answer(self, d: dict):
        self.streams.update(streams_by_mid(d["sdp"]))
        await self.pc.setRemoteDescription(RTCSessionDescription(d["sdp"], "offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await self.send("voice_answer", channel=d["channel"], sdp=self.pc.localDescription.sdp)

    async def add_candidate(self, line: str):
        # The server's candidates hold for the bundled transport, named by the first line.
        candidate = candidate_from_sdp(line.removeprefix("a=").removeprefix("candidate:"))
        candidate.sdpMid = self.pc.getTransceivers()[0].mid
        await self.pc.addIceCandidate(candidate)

    def count_op(self, op: str, **d) -> int:
        return sum(1 for m in self.messages
                   if m["op"] == op and all(m["d"].get(k) == v for k, v in d.items()))

    async def wait_op(self, op: str, n: int = 1, **d):
        await until(lambda: self.count_op(op, **d) >= n, f"{self.user_id}: {op} x{n} {d}")

    async def wait_heard(self, speaker: str, frames: int):
        await until(lambda: self.frames.get(speaker, 0) >= frames,
                    f"{self.user_id} hearing {frames} frames from {speaker} (has {self.frames})")

    def heard(self, speaker: str) -> int:
        return self.frames.get(speaker, 0)

    async def close(self):
        for task in self.tasks:
            task.cancel()
        if self.pc is not None:
            await self.pc.close()
        await self.ws.close()


async def until(condition, what: str, limit: float = WAIT):
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {limit}s")
        await asyncio.sleep(0.05)


class VoiceWithAiortc(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self):
        self.gateway = Gateway()
        self.users = []

    async def asyncTearDown(self):
        for user in self.users:
            await user.close()
        self.gateway.stop()

    async def user(self, user_id: str) -> VoiceUser:
        user = VoiceUser(user_id)
        await user.connect(self.gateway)
        self.users.append(user)
        return user

    async def test_two_then_three_users_each_hear_the_others_and_a_leave_renegotiates(self):
        alice, bob = await self.user("alice"), await self.user("bob")
        await alice.send("voice_join", channel="lounge")
        await alice.wait_op("voice_room_state")
        await bob.send("voice_join", channel="lounge")
        await alice.wait_op("voice_user_joined", user_id="bob")
        # 25 decoded frames: half a second of tone each way.
        await alice.wait_heard("bob", 25)
        await bob.wait_heard("alice", 25)

        carol = await self.user("carol")
        await carol.send("voice_join", channel="lounge")
        await carol.wait_op("voice_room_state")
        for listener, speakers in [(alice, ["bob", "carol"]), (bob, ["alice", "carol"]),
                                   (carol, ["alice", "bob"])]:
            for speaker in speakers:
                await listener.wait_heard(speaker, listener.heard(speaker) + 25)
        self.assertEqual(alice.heard("alice"), 0, "nobody hears themselves")

        offers = alice.count_op("voice_offer")
        await carol.send("voice_leave", channel="lounge")
        await alice.wait_op("voice_user_left", user_id="carol")
        await bob.wait_op("voice_user_left", user_id="carol")
        await alice.wait_op("voice_offer", offers + 1)  # carol's line stopped
        await alice.wait_heard("bob", alice.heard("bob") + 25)
        await bob.wait_heard("alice", bob.heard("alice") + 25)

    async def test_a_muted_user_is_not_forwarded_until_unmuted(self):
        alice, bob = await self.user("alice"), await self.user("bob")
        for user in (alice, bob):
            await user.send("voice_join", channel="lounge")
            await user.wait_op("voice_room_state")
        await bob.wait_heard("alice", 25)
        await alice.send("voice_mute", channel="lounge")
        await bob.wait_op("voice_user_muted", user_id="alice")
        await asyncio.sleep(0.5)  # what was in flight drains
        before = bob.heard("alice")
        await asyncio.sleep(1.0)
        self.assertLessEqual(bob.heard("alice") - before, 2, "forwarded while muted")
        await alice.wait_heard("bob", alice.heard("bob") + 25)  # bob still is
        await alice.send("voice_unmute", channel="lounge")
        await bob.wait_op("voice_user_unmuted", user_id="alice")
        await bob.wait_heard("alice", before + 25)


if __name__ == "__main__":
    unittest.main()
