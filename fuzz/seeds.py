#!/usr/bin/env python3
"""Writes the seed inputs of every target into seeds/<target>/: realistic
messages, requests and frame scripts that the fuzzer mutates from. Run from fuzz/:
`python3 seeds.py`. The seeds are committed; corpus/<target>/ holds what the
fuzzer found beyond them, minimized."""

import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


# --- MessagePack, just what the seeds need ---------------------------------------------
def mp(v):
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if isinstance(v, int):
        if 0 <= v < 128:
            return bytes([v])
        if 0 <= v < 2**16:
            return b"\xcd" + struct.pack(">H", v)
        return b"\xcf" + struct.pack(">Q", v)
    if isinstance(v, str):
        b = v.encode()
        if len(b) < 32:
            return bytes([0xA0 | len(b)]) + b
        if len(b) < 256:
            return b"\xd9" + bytes([len(b)]) + b
        return b"\xda" + struct.pack(">H", len(b)) + b
    if isinstance(v, bytes):
        return b"\xc4" + bytes([len(v)]) + v
    if isinstance(v, list):
        return bytes([0x90 | len(v)]) + b"".join(mp(x) for x in v)
    if isinstance(v, dict):
        return bytes([0x80 | len(v)]) + b"".join(mp(k) + mp(x) for k, x in v.items())
    raise TypeError(v)


def js(v):
    return json.dumps(v, separators=(",", ":")).encode()


# --- client messages (PROTOCOL.md §4) ---------------------------------------------------
MESSAGES = [
    {"op": "identify", "d": {"token": "ok"}, "ref": 1},
    {"op": "identify", "d": {"token": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2ln"}},
    {"op": "refresh", "d": {"token": "ok"}, "ref": 2},
    {"op": "ping"},
    {"op": "ping", "ref": 3},
    {"op": "subscribe", "d": {"topics": ["channel:1", "server:2"]}, "ref": 4},
    {"op": "subscribe", "d": {"topics": ["channel:1"], "since": {"channel:1": 41}}, "ref": 5},
    {"op": "subscribe", "d": {"topics": ["user:other", "voice:1", "bogus:1", "global"]}},
    {"op": "unsubscribe", "d": {"topics": ["channel:1"]}, "ref": 6},
    {"op": "typing_start", "d": {"topic": "channel:1"}},
    {"op": "typing_stop", "d": {"topic": "channel:1"}, "ref": 7},
    {"op": "presence_set", "d": {"status": "away"}},
    {"op": "presence_query", "d": {"user_ids": ["u1", "u2"]}, "ref": 8},
    {"op": "voice_join", "d": {"channel": "v1"}},
    {"op": "voice_answer", "d": {"channel": "v1", "sdp": "v=0\r\n"}},
    {"op": "voice_ice_candidate", "d": {"channel": "v1", "candidate": "candidate:1 1 UDP 1 1.2.3.4 5 typ host"}},
    {"op": "voice_mute", "d": {"channel": "v1"}},
    {"op": "nope", "d": {}, "ref": 9},
]


def json_frames():
    out = [js(m) for m in MESSAGES]
    out.append(b"\n".join(js(m) for m in MESSAGES[3:7]))
    out.append(b'{"op":"ping"}\n\n{"op":"ping","ref":1}\n')
    out.append(b'{"op":"subscribe","d":{"topics":["channel:\\u00e9"]},"ref":18446744073709551615}')
    return out


def msgpack_frames():
    out = [mp(m) for m in MESSAGES]
    out.append(b"".join(mp(m) for m in MESSAGES[3:7]))
    return out


# --- WebSocket client frames ------------------------------------------------------------
MASK = bytes([0x37, 0xFA, 0x21, 0x3D])


def frame(opcode, payload, fin=True):
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


def read_path_seeds():
    """byte 0: bit 0 msgpack, bit 1 identified; byte 1: chunks and time; then bytes."""
    seeds = {}
    for enc, frames, op in ((0, json_frames(), 1), (1, msgpack_frames(), 2)):
        name = "json" if enc == 0 else "msgpack"
        ident, sub, ping, unsub = frames[0], frames[5], frames[3], frames[8]
        seeds[f"{name}-identify-subscribe"] = bytes([enc, 0x05]) + frame(op, ident) + frame(op, sub) + frame(op, ping)
        seeds[f"{name}-ready-all-ops"] = bytes([enc | 2, 0x03]) + b"".join(frame(op, f) for f in frames[2:])
        seeds[f"{name}-fragmented"] = bytes([enc | 2, 0x01]) + frame(op, sub[:10], fin=False) + frame(9, b"p") + frame(0, sub[10:]) + frame(op, unsub)
        seeds[f"{name}-ping-pong-close"] = bytes([enc | 2, 0x02]) + frame(9, b"hi") + frame(10, b"") + frame(8, struct.pack(">H", 1000) + b"bye")
        seeds[f"{name}-no-identify"] = bytes([enc, 0x80]) + frame(op, ping) + frame(op, sub)
        seeds[f"{name}-ping-flood"] = bytes([enc, 0x00]) + frame(op, ping) * 30 + frame(9, b"") * 30
    seeds["json-wrong-opcode"] = bytes([2, 0]) + frame(2, b"\x81\xa2op\xa4ping")
    seeds["json-bad-utf8"] = bytes([2, 0]) + frame(1, b'{"op":"\xff"}')
    seeds["json-unmasked"] = bytes([2, 0]) + b"\x81\x0d" + b'{"op":"ping"}'
    seeds["json-too-big"] = bytes([0, 0]) + b"\x81\xff" + struct.pack(">Q", 1 << 20) + MASK
    return seeds


def script_frame(tag, payload):
    if len(payload) > 255:
        return bytes([tag | 0x40]) + struct.pack(">H", len(payload)) + payload
    return bytes([tag, len(payload)]) + payload


def frames_seeds():
    """See websocket_frames.rs: mode, verdicts, then records."""
    READ, READ_N, WRITE, TICK, PUB, PUB_USER, TYPING, VERDICTS = (0x80 + i for i in range(8))
    seeds = {}
    for enc, frames in ((0, json_frames()), (1, msgpack_frames())):
        name = "json" if enc == 0 else "msgpack"
        f = lambda i: script_frame(0, frames[i])
        seeds[f"{name}-identify-subscribe-deliver"] = bytes([enc, 0xFF]) + f(0) + f(5) + bytes([READ, WRITE, PUB, 4, PUB_USER, 1, TYPING, 0, WRITE]) + f(3) + bytes([READ, WRITE])
        seeds[f"{name}-ready-every-op"] = bytes([enc | 2, 0xFF]) + b"".join(script_frame(0, m) for m in frames[2:]) + bytes([READ, WRITE])
        seeds[f"{name}-membership"] = bytes([enc | 2 | 8, 0x01]) + f(5) + bytes([READ, WRITE, VERDICTS, 0]) + f(6) + bytes([READ, WRITE, PUB, 2, WRITE])
        seeds[f"{name}-partial-reads"] = bytes([enc | 2, 0xFF]) + f(5) + f(3) + bytes([READ_N, 7, READ_N, 9, READ, WRITE])
        seeds[f"{name}-fragments-and-controls"] = bytes([enc | 2, 0xFF]) + script_frame(0x08, frames[5][:6]) + script_frame(5, b"p") + script_frame(4, frames[5][6:]) + script_frame(6, b"") + script_frame(7, struct.pack(">H", 1000)) + bytes([READ, WRITE])
        seeds[f"{name}-slow-reader"] = bytes([enc | 2 | 4 | 32, 0xFF]) + f(5) + bytes([READ]) + bytes([PUB, 40] * 12) + bytes([TICK, 30, PUB, 40, TICK, 30])
        seeds[f"{name}-batched"] = bytes([enc | 2 | 16, 0xFF]) + f(5) + bytes([READ, WRITE, PUB, 1, PUB, 1, TYPING, 1, TICK, 1, WRITE])
        seeds[f"{name}-small-limits"] = bytes([enc | 4, 0xFF]) + f(0) + f(5) + bytes([READ]) + script_frame(0, frames[3]) * 8 + bytes([READ, WRITE, TICK, 60])
        seeds[f"{name}-identify-timeout"] = bytes([enc | 4, 0xFF]) + f(3) + bytes([READ, TICK, 30, WRITE])
    seeds["json-rsv-and-unmasked"] = bytes([2, 0xFF]) + script_frame(0x20, b'{"op":"ping"}') + script_frame(0x10, b'{"op":"ping"}') + bytes([READ, WRITE])
    return seeds


# --- upgrade requests -------------------------------------------------------------------
def upgrade_seeds():
    base = [
        "GET /ws?token=ok HTTP/1.1",
        "Host: localhost:8080",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ]

    def req(lines):
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    seeds = {
        "query-token": req(base),
        "no-token": req(["GET /ws HTTP/1.1"] + base[1:]),
        "bearer-msgpack": req(["GET /ws HTTP/1.1"] + base[1:] + ["Authorization: Bearer ok", "Sec-WebSocket-Protocol: foo, coregate.v1.msgpack"]),
        "json-subprotocol": req(base + ["Sec-WebSocket-Protocol: coregate.v1.json"]),
        "browser": req([
            "GET /ws?x=1&token=eyJ.eyJ.sig HTTP/1.1", "Host: example.com", "Connection: keep-alive, Upgrade",
            "Pragma: no-cache", "Cache-Control: no-cache", "User-Agent: Mozilla/5.0", "Upgrade: websocket",
            "Origin: https://example.com", "Sec-WebSocket-Version: 13", "Accept-Encoding: gzip, deflate, br",
            "Accept-Language: en-US,en;q=0.9", "Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==",
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
        ]),
        "unknown-subprotocol": req(base + ["Sec-WebSocket-Protocol: mqtt"]),
        "wrong-path": req(["GET /other HTTP/1.1"] + base[1:]),
        "post": req(["POST /ws HTTP/1.1"] + base[1:]),
        "no-key": req(base[:5]),
        "version-8": req(base[:4] + ["Sec-WebSocket-Version: 8"] + base[5:]),
        "partial": req(base)[:40],
        "with-frame-after": req(base) + frame(1, b'{"op":"ping"}'),
    }
    return seeds


def publication_seeds():
    return {
        "backend": js({"op": "message_new", "d": {"id": 1, "text": "hi\nthere", "tags": ["a"]}}),
        "backend-exclude": js({"op": "typing_start", "d": {"user_id": "u1"}, "exclude_user": "u1"}),
        "backend-no-d": js({"op": "ping"}),
        "admin": js({"topic": "channel:1", "op": "message", "d": {"x": 1.5, "n": None, "s": "\u00e9\ud83d\ude00"}}),
        "admin-user": js({"topic": "user:u1", "op": "notify", "d": [1, 2, 3], "exclude_user": "u2"}),
        "admin-bad-topic": js({"topic": "bogus:1", "op": "x"}),
    }


def write(target, seeds):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


def main():
    write("decode_client_json", {f"{i:02}": m for i, m in enumerate(json_frames())})
    write("decode_client_msgpack", {f"{i:02}": m for i, m in enumerate(msgpack_frames())})
    write("publication", publication_seeds())
    write("upgrade_request", upgrade_seeds())
    write("websocket_read_path", read_path_seeds())
    write("websocket_frames", frames_seeds())


if __name__ == "__main__":
    main()
