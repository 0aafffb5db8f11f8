#include "sim/blk/sim_blkdigest.h"

#include <openssl/evp.h>

#include <algorithm>
#include <memory>
#include <vector>

namespace xenpath::sim {

namespace {

struct MdFree {
  void operator()(EVP_MD_CTX* c) const noexcept { EVP_MD_CTX_free(c); }
};

}  // namespace

Result<BlkDigest> blk_read_digest(SimBlkfront& front, uint64_t disk_bytes, uint32_t chunk, unsigned queue_depth,
                                  std::chrono::milliseconds timeout) noexcept {
  if (chunk == 0 || chunk % 512 != 0 || queue_depth == 0) return unexpected(EINVAL);
  std::unique_ptr<EVP_MD_CTX, MdFree> md(EVP_MD_CTX_new());
  if (!md || EVP_DigestInit_ex(md.get(), EVP_sha256(), nullptr) != 1) return unexpected(ENOMEM);
  struct Slot {
    SimBlkfront::Io io;  // first: reap() hands back &io
    std::vector<std::byte> buf;
    bool done = false;
  };
  const unsigned depth = std::min<unsigned>(queue_depth, front.ring_size());
  std::vector<Slot> slots;
  try {
    slots.resize(depth);
    for (Slot& s : slots) s.buf.resize(chunk);
  } catch (...) {
    return unexpected(ENOMEM);
  }
  const uint32_t ss = front.options().sector_size;
  BlkDigest out;
  uint64_t next = 0;     // next byte to request
  uint64_t hashed = 0;   // bytes hashed so far, in order
  uint64_t issued = 0;   // requests issued; request k uses slot k % depth
  uint64_t retired = 0;  // requests hashed
  std::vector<SimBlkfront::Io*> reaped(depth);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (hashed < disk_bytes) {
    bool started = false;
    while (next < disk_bytes && issued - retired < depth) {
      Slot& s = slots[issued % depth];
      const auto len = static_cast<uint32_t>(std::min<uint64_t>(chunk, disk_bytes - next));
      s.io = {};
      s.io.op = BLKIF_OP_READ;
      s.io.sector = next / ss;
      s.io.sectors = len / ss;
      s.io.data = s.buf.data();
      s.done = false;
      if (Status st = front.start(s.io); !st) {
        if (st.error() == ENOSPC) break;
        return unexpected(st.error());
      }
      next += len;
      ++issued;
      started = true;
    }
    if (started) XP_TRY(front.publish());
    const unsigned n = front.reap(reaped);
    for (unsigned i = 0; i < n; ++i) {
      auto* s = reinterpret_cast<Slot*>(reaped[i]);
      if (s->io.status != BLKIF_RSP_OKAY || s->io.error != 0) return unexpected(EIO);
      s->done = true;
    }
    // Hash the answered prefix, in disk order.
    while (retired < issued && slots[retired % depth].done) {
      Slot& s = slots[retired % depth];
      const size_t len = size_t{s.io.sectors} * ss;
      if (EVP_DigestUpdate(md.get(), s.buf.data(), len) != 1) return unexpected(EIO);
      hashed += len;
      out.bytes += len;
      ++out.ios;
      s.done = false;
      ++retired;
    }
    if (n != 0) {
      deadline = std::chrono::steady_clock::now() + timeout;
    } else if (!front.rearm()) {
      if (std::chrono::steady_clock::now() > deadline) return unexpected(ETIMEDOUT);
      (void)front.wait_event(std::chrono::milliseconds(10));
    }
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  if (EVP_DigestFinal_ex(md.get(), digest, &len) != 1) return unexpected(EIO);
  static const char* kHex = "0123456789abcdef";
  try {
    for (unsigned i = 0; i < len; ++i) {
      out.sha256.push_back(kHex[digest[i] >> 4]);
      out.sha256.push_back(kHex[digest[i] & 15]);
    }
  } catch (...) {
    return unexpected(ENOMEM);
  }
  return out;
}

}  // namespace xenpath::sim
