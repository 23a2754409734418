// SDP for the Node end-to-end tests, which have no WebRTC stack: the answer a browser would
// give to the SFU's offer (same lines, directions mirrored, Opus, our ICE credentials and a
// certificate fingerprint), so that the SFU takes it and renegotiates as it does for a real
// peer. No media flows from it (the browser test does that with Chromium's real WebRTC).
import { randomBytes } from 'node:crypto';

const MIRROR = { recvonly: 'sendonly', sendonly: 'recvonly', sendrecv: 'sendrecv', inactive: 'inactive' };

/** The offer's media sections: `{port, mid, direction, msid}` each, in order. */
export function mediaSections(sdp) {
  const sections = [];
  for (const line of sdp.split(/\r?\n/)) {
    if (line.startsWith('m=')) sections.push({ port: Number(line.split(' ')[1]), mid: null, direction: 'sendrecv', msid: null });
    const section = sections.at(-1);
    if (!section) continue;
    if (line.startsWith('a=mid:')) section.mid = line.slice('a=mid:'.length).trim();
    if (line.startsWith('a=msid:')) section.msid = line.slice('a=msid:'.length).split(' ')[0];
    const attribute = line.slice(2).trim();
    if (line.startsWith('a=') && attribute in MIRROR) section.direction = attribute;
  }
  return sections;
}

/** The SFU's candidates in `sdp` (`a=candidate:` lines, without the `a=`). */
export function candidates(sdp) {
  return sdp.split(/\r?\n/).filter((l) => l.startsWith('a=candidate:')).map((l) => l.slice(2));
}

/**
 * One WebRTC session's answering side: its ICE credentials and certificate fingerprint stay
 * the same for every answer (new ones would be an ICE restart, which the SFU refuses).
 */
export class AnsweringPeer {
  constructor() {
    this.ufrag = randomBytes(3).toString('hex');
    this.pwd = randomBytes(12).toString('hex');
    this.fingerprint = [...randomBytes(32)].map((b) => b.toString(16).padStart(2, '0').toUpperCase()).join(':');
    this.origin = randomBytes(6).readUIntBE(0, 6);
    this.version = 1;
  }

  /** The answer to `offer`: sends audio on its first line, receives the others. */
  answer(offer) {
    const sections = mediaSections(offer);
    const open = sections.filter((s) => s.port !== 0);
    const lines = [
      'v=0',
      `o=- ${this.origin} ${this.version++} IN IP4 127.0.0.1`,
      's=-',
      't=0 0',
      `a=group:BUNDLE ${open.map((s) => s.mid).join(' ')}`,
      'a=msid-semantic: WMS *',
    ];
    sections.forEach((section, index) => {
      lines.push(
        `m=audio ${section.port === 0 ? 0 : 9} UDP/TLS/RTP/SAVPF 111`,
        'c=IN IP4 0.0.0.0',
        `a=ice-ufrag:${this.ufrag}`,
        `a=ice-pwd:${this.pwd}`,
        `a=fingerprint:sha-256 ${this.fingerprint}`,
        'a=setup:active',
        `a=mid:${section.mid}`,
        `a=${section.port === 0 ? 'inactive' : MIRROR[section.direction]}`,
        'a=rtcp-mux',
        'a=rtpmap:111 opus/48000/2',
        'a=fmtp:111 minptime=10;useinbandfec=1',
      );
      if (index === 0) lines.push('a=msid:mic mic-track', 'a=ssrc:1000 cname:node');
    });
    return `${lines.join('\r\n')}\r\n`;
  }
}
