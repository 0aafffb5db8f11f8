// Runs a fuzz target (LLVMFuzzerTestOneInput) without libFuzzer: a fixed
// seed, so a CI failure reproduces. Inputs are random bytes of random length
// and mutations (bit flips, splices) of earlier inputs, which reaches deeper
// than pure noise for structured formats. Usage: <target>_replay [iterations]
// [file...] — files given are replayed as they are (crash reproducers).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <random>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv) {
  const long iterations = argc > 1 ? std::strtol(argv[1], nullptr, 10) : 10000;
  for (int i = 2; i < argc; ++i) {
    std::ifstream f(argv[i], std::ios::binary);
    std::vector<uint8_t> buf((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    LLVMFuzzerTestOneInput(buf.data(), buf.size());
  }
  std::mt19937_64 rng(0x78656e70617468ULL);
  std::vector<uint8_t> prev;
  for (long n = 0; n < iterations; ++n) {
    std::vector<uint8_t> in;
    if (!prev.empty() && (rng() & 1)) {
      in = prev;
      const int flips = 1 + static_cast<int>(rng() % 8);
      for (int k = 0; k < flips; ++k) in[rng() % in.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
      if (rng() % 4 == 0) in.resize(rng() % (in.size() + 64), static_cast<uint8_t>(rng()));
    } else {
      in.resize(rng() % 8192);
      for (auto& b : in) b = static_cast<uint8_t>(rng());
    }
    LLVMFuzzerTestOneInput(in.data(), in.size());
    prev = std::move(in);
  }
  std::printf("%ld inputs, no crash\n", iterations);
  return 0;
}
