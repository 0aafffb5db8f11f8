// Ethernet/IPv4/IPv6/TCP/UDP frames built and checked byte by byte, for the
// simulated guests and wires of the tests, fuzzers and benchmarks. Written
// independently of the backend's own checksum code (a shared bug must not
// make both sides agree). Pure functions: any thread, no guest memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "netback/port.h"

namespace xenpath::sim::frames {

inline constexpr size_t kEthLen = 14;
inline constexpr size_t kIp4Len = 20;
inline constexpr size_t kIp6Len = 40;
inline constexpr size_t kTcpLen = 20;
inline constexpr size_t kUdpLen = 8;
inline constexpr uint8_t kTcpFin = 0x01, kTcpPsh = 0x08, kTcpAck = 0x10, kTcpCwr = 0x80;

inline uint16_t be16(const uint8_t* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }
inline uint32_t be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
inline void put16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}
inline void put32(uint8_t* p, uint32_t v) {
  put16(p, static_cast<uint16_t>(v >> 16));
  put16(p + 2, static_cast<uint16_t>(v));
}

// What travels with a TSO/GSO TCP frame (as make_frame builds it: no VLAN,
// no IP options): cut into `mss`-byte segments, `l4_len` the TCP header.
inline PacketMeta tso_meta(uint16_t mss, bool v6 = false, uint16_t l4_len = kTcpLen) {
  PacketMeta m;
  m.flags = (v6 ? PacketMeta::kIpv6 : PacketMeta::kIpv4) | PacketMeta::kTcp | PacketMeta::kSegment;
  m.l2_len = kEthLen;
  m.l3_len = v6 ? kIp6Len : kIp4Len;
  m.l4_len = l4_len;
  m.mss = mss;
  return m;
}

// RFC 1071 sum over big-endian 16-bit words (odd tail padded with zero).
inline uint32_t sum16(const uint8_t* p, size_t n, uint32_t acc = 0) {
  for (size_t i = 0; i + 1 < n; i += 2) acc += be16(p + i);
  if (n & 1) acc += uint32_t{p[n - 1]} << 8;
  return acc;
}
inline uint16_t fold16(uint32_t acc) {
  while (acc >> 16) acc = (acc & 0xffff) + (acc >> 16);
  return static_cast<uint16_t>(acc);
}

struct FrameSpec {
  bool v6 = false;
  bool udp = false;
  size_t payload = 0;
  uint32_t seq = 1000;
  uint8_t tcp_flags = kTcpAck | kTcpPsh;
  uint16_t ip_id = 0x1234;
  uint8_t payload_seed = 7;
};

inline uint8_t payload_byte(const FrameSpec& s, size_t i) {
  return static_cast<uint8_t>((i * 31 + s.payload_seed + (i >> 8)) & 0xff);
}

inline size_t header_len(const FrameSpec& s) {
  return kEthLen + (s.v6 ? kIp6Len : kIp4Len) + (s.udp ? kUdpLen : kTcpLen);
}

// A whole frame with correct IP lengths; checksums left as `csum_fill`
// (a guest with csum_blank leaves anything there).
inline std::vector<uint8_t> make_frame(const FrameSpec& s, uint16_t csum_fill = 0xdead) {
  std::vector<uint8_t> f(header_len(s) + s.payload);
  uint8_t* p = f.data();
  const uint8_t dst[6] = {0x02, 0, 0, 0, 0, 0x02};
  const uint8_t src[6] = {0x02, 0, 0, 0, 0, 0x01};
  std::memcpy(p, dst, 6);
  std::memcpy(p + 6, src, 6);
  put16(p + 12, s.v6 ? 0x86dd : 0x0800);
  uint8_t* ip = p + kEthLen;
  const uint8_t proto = s.udp ? 17 : 6;
  const size_t l4 = (s.udp ? kUdpLen : kTcpLen) + s.payload;
  if (s.v6) {
    ip[0] = 0x60;
    put16(ip + 4, static_cast<uint16_t>(l4));
    ip[6] = proto;
    ip[7] = 64;
    for (int i = 0; i < 16; ++i) {
      ip[8 + i] = static_cast<uint8_t>(0x20 + i);
      ip[24 + i] = static_cast<uint8_t>(0x40 + i);
    }
  } else {
    ip[0] = 0x45;
    put16(ip + 2, static_cast<uint16_t>(kIp4Len + l4));
    put16(ip + 4, s.ip_id);
    put16(ip + 6, 0x4000);  // DF
    ip[8] = 64;
    ip[9] = proto;
    put16(ip + 10, csum_fill);
    const uint8_t sa[4] = {10, 0, 0, 1}, da[4] = {10, 0, 0, 2};
    std::memcpy(ip + 12, sa, 4);
    std::memcpy(ip + 16, da, 4);
  }
  uint8_t* l4p = ip + (s.v6 ? kIp6Len : kIp4Len);
  put16(l4p, 40000);
  put16(l4p + 2, 5001);
  if (s.udp) {
    put16(l4p + 4, static_cast<uint16_t>(l4));
    put16(l4p + 6, csum_fill);
  } else {
    put32(l4p + 4, s.seq);
    put32(l4p + 8, 77);
    l4p[12] = 0x50;
    l4p[13] = s.tcp_flags;
    put16(l4p + 14, 65535);
    put16(l4p + 16, csum_fill);
  }
  uint8_t* pay = l4p + (s.udp ? kUdpLen : kTcpLen);
  for (size_t i = 0; i < s.payload; ++i) pay[i] = payload_byte(s, i);
  return f;
}

// A 30-byte UDP datagram to the IPv4 multicast group 01:00:5e:01:02:<last>.
inline std::vector<uint8_t> multicast_frame(uint8_t last) {
  FrameSpec m;
  m.udp = true;
  m.payload = 30;
  auto f = make_frame(m);
  const uint8_t dst[6] = {0x01, 0x00, 0x5e, 0x01, 0x02, last};
  std::memcpy(f.data(), dst, 6);
  return f;
}

// Makes the IPv4 header checksum of an Ethernet+IPv4 frame valid.
inline void fix_ip_checksum(std::vector<uint8_t>& f) {
  uint8_t* ip = f.data() + kEthLen;
  const size_t l3 = (ip[0] & 0xf) * 4u;
  put16(ip + 10, 0);
  put16(ip + 10, static_cast<uint16_t>(~fold16(sum16(ip, l3))));
}

// Makes both checksums of an Ethernet+IPv4+TCP frame valid.
inline void fix_tcp4_checksums(std::vector<uint8_t>& f) {
  fix_ip_checksum(f);
  uint8_t* ip = f.data() + kEthLen;
  const size_t l3 = (ip[0] & 0xf) * 4u;
  const size_t l4len = be16(ip + 2) - l3;
  uint8_t* tcp = ip + l3;
  put16(tcp + 16, 0);
  const uint32_t pseudo = sum16(ip + 12, 8) + 6 + static_cast<uint32_t>(l4len);
  put16(tcp + 16, static_cast<uint16_t>(~fold16(sum16(tcp, l4len, pseudo))));
}

// The pseudo-header sum a CHECKSUM_PARTIAL (csum_blank) TCP/UDP field holds.
inline uint16_t partial_field(const std::vector<uint8_t>& f) {
  const uint8_t* ip = f.data() + kEthLen;
  if (be16(f.data() + 12) == 0x0800) {
    const size_t l3 = (ip[0] & 0xf) * 4u;
    return fold16(sum16(ip + 12, 8) + ip[9] + static_cast<uint32_t>(be16(ip + 2) - l3));
  }
  return fold16(sum16(ip + 8, 32) + ip[6] + static_cast<uint32_t>(be16(ip + 4)));
}

// What a received frame says about itself; `error` is empty when its IP
// and L4 checksums verify.
struct ParsedFrame {
  bool v6 = false;
  bool udp = false;
  uint32_t seq = 0;
  uint8_t tcp_flags = 0;
  uint16_t ip_id = 0;
  std::vector<uint8_t> payload;
  std::string error;
};

inline ParsedFrame parse_frame(const std::vector<uint8_t>& f) {
  ParsedFrame r;
  if (f.size() < kEthLen + kIp4Len) {
    r.error = "short";
    return r;
  }
  const uint16_t type = be16(f.data() + 12);
  const uint8_t* ip = f.data() + kEthLen;
  size_t l3 = 0, l4len = 0;
  uint8_t proto = 0;
  uint32_t pseudo = 0;
  if (type == 0x0800) {
    l3 = (ip[0] & 0xf) * 4u;
    const size_t total = be16(ip + 2);
    if (kEthLen + total != f.size()) {
      r.error = "ipv4 total length " + std::to_string(total) + " vs frame " + std::to_string(f.size());
      return r;
    }
    if (fold16(sum16(ip, l3)) != 0xffff) {
      r.error = "bad ipv4 header checksum";
      return r;
    }
    r.ip_id = be16(ip + 4);
    proto = ip[9];
    l4len = total - l3;
    pseudo = sum16(ip + 12, 8) + proto + static_cast<uint32_t>(l4len);
  } else if (type == 0x86dd) {
    r.v6 = true;
    l3 = kIp6Len;
    l4len = be16(ip + 4);
    if (kEthLen + kIp6Len + l4len != f.size()) {
      r.error = "ipv6 payload length mismatch";
      return r;
    }
    proto = ip[6];
    pseudo = sum16(ip + 8, 32) + proto + static_cast<uint32_t>(l4len);
  } else {
    r.error = "not IP";
    return r;
  }
  const uint8_t* l4 = ip + l3;
  r.udp = proto == 17;
  if (fold16(sum16(l4, l4len, pseudo)) != 0xffff) {
    r.error = "bad L4 checksum";
    return r;
  }
  size_t hl = 0;
  if (r.udp) {
    hl = kUdpLen;
    if (be16(l4 + 6) == 0) r.error = "udp checksum 0";
  } else {
    hl = (l4[12] >> 4) * 4u;
    r.seq = be32(l4 + 4);
    r.tcp_flags = l4[13];
  }
  r.payload.assign(l4 + hl, l4 + l4len);
  return r;
}

}  // namespace xenpath::sim::frames
