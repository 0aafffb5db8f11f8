// Fuzz target: whatever a guest writes into its shared ring page (indexes,
// event fields, request slots), the backend end must stay in bounds, never
// hand out more requests than the ring holds, and never answer more than it
// consumed. The input is the page, followed by a script of producer-index
// changes the guest makes between the backend's bursts.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "common/ring.h"
#include "common/ring_types.h"

using namespace xenpath;

namespace {

template <typename Types>
void exercise(uint8_t mode, const uint8_t* data, size_t size) {
  static void* page = std::aligned_alloc(kPageSize, kPageSize);
  const size_t head = size < kPageSize ? size : kPageSize;
  std::memset(page, 0, kPageSize);
  std::memcpy(page, data, head);
  if (mode & 0x10) {
    // Mostly-plausible indexes (random ones rarely pass attach): a random
    // base and up to a little more than a ring's worth outstanding.
    auto* s = static_cast<typename Types::Sring*>(page);
    s->req_prod = s->rsp_prod + (mode >> 5) * 9;
  }
  BackRing<Types> back;
  if (!back.attach(page, kPageSize)) return;
  typename Types::Request reqs[64];
  auto* sring = static_cast<typename Types::Sring*>(page);
  size_t pos = head;
  for (int burst = 0; burst < 16; ++burst) {
    auto n = back.consume(reqs);
    if (!n) {
      if (!back.halted()) std::abort();
      return;
    }
    if (*n > back.size() || back.outstanding() > back.size()) std::abort();
    for (unsigned i = 0; i < *n; ++i) {
      // consumed ones can always be answered
      if (!back.emplace_response([](typename Types::Response&) {})) std::abort();
    }
    (void)back.flush();
    (void)back.final_check();
    // The guest moves its producer index as the script says.
    if (pos + 4 <= size) {
      uint32_t delta;
      std::memcpy(&delta, data + pos, 4);
      pos += 4;
      sring->req_prod = sring->req_prod + (delta & 0x1ff) - ((delta >> 9) & 0x3f);
      if (delta & 0x80000000u) sring->req_prod = delta;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  switch (data[0] % 3) {
    case 0:
      exercise<BlkifRing>(data[0], data + 1, size - 1);
      break;
    case 1:
      exercise<NetifTxRing>(data[0], data + 1, size - 1);
      break;
    default:
      exercise<NetifRxRing>(data[0], data + 1, size - 1);
      break;
  }
  return 0;
}
