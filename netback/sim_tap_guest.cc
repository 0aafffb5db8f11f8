#include "netback/sim_tap_guest.h"

#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace xenpath::sim {

namespace {

// Largest frame one netif packet carries (the first slot's 16-bit size).
constexpr size_t kMaxFrame = 65535;
// Frames per direction per step, so one side cannot starve the other.
constexpr unsigned kStepFrames = 64;

class FdGuard {
 public:
  explicit FdGuard(int fd) noexcept : fd_(fd) {}
  ~FdGuard() {
    if (fd_ >= 0) ::close(fd_);
  }
  FdGuard(const FdGuard&) = delete;
  FdGuard& operator=(const FdGuard&) = delete;
  FdGuard& operator=(FdGuard&& o) noexcept {
    if (this != &o) {
      if (fd_ >= 0) ::close(fd_);
      fd_ = o.release();
    }
    return *this;
  }
  [[nodiscard]] int get() const noexcept { return fd_; }
  int release() noexcept {
    const int f = fd_;
    fd_ = -1;
    return f;
  }

 private:
  int fd_;
};

}  // namespace

Result<int> open_tap(const std::string& name, const std::string& netns) noexcept {
  if (name.empty() || name.size() >= IFNAMSIZ) return unexpected(EINVAL);
  FdGuard home(-1), target(-1);
  if (!netns.empty()) {
    // The tap is created in the namespace /dev/net/tun was opened in, so
    // this thread opens it there and comes back.
    const std::string path = netns.find('/') == std::string::npos ? "/run/netns/" + netns : netns;
    target = FdGuard(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (target.get() < 0) return unexpected_errno();
    home = FdGuard(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
    if (home.get() < 0) return unexpected_errno();
    if (::setns(target.get(), CLONE_NEWNET) != 0) return unexpected_errno();
  }
  FdGuard tap(::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC));
  const int open_err = errno;
  if (home.get() >= 0 && ::setns(home.get(), CLONE_NEWNET) != 0) {
    // Cannot happen short of a kernel bug; never keep running elsewhere.
    std::abort();
  }
  if (tap.get() < 0) return unexpected(open_err);
  ifreq ifr{};
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
  std::memcpy(ifr.ifr_name, name.c_str(), name.size());
  if (::ioctl(tap.get(), TUNSETIFF, &ifr) != 0) return unexpected_errno();
  return tap.release();
}

SimTapGuest::SimTapGuest(SimNetfront& front, EventChannel& evtchn, int tap_fd) noexcept
    : front_(front), evtchn_(evtchn), tap_(tap_fd) {
  try {
    pending_.bytes.reserve(kMaxFrame);
    answers_.reserve(256);
    frames_.reserve(256);
  } catch (...) {
    // Grows on demand instead.
  }
}

SimTapGuest::~SimTapGuest() {
  if (tap_ >= 0) ::close(tap_);
}

bool SimTapGuest::tap_to_ring() noexcept {
  bool any = false;
  for (unsigned i = 0; i < kStepFrames; ++i) {
    if (!have_pending_) {
      try {
        pending_.bytes.resize(kMaxFrame);
      } catch (...) {
        return any;
      }
      const ssize_t n = ::read(tap_, pending_.bytes.data(), pending_.bytes.size());
      if (n <= 0) {
        pending_.bytes.clear();
        break;  // EAGAIN (or the tap went away)
      }
      pending_.bytes.resize(static_cast<size_t>(n));
      have_pending_ = true;
    }
    const Status st = front_.send(pending_);
    if (!st && st.error() == EAGAIN) break;  // ring or pages full: retry after answers
    if (st) ++stats_.tap_frames_in;
    else ++stats_.oversize_drops;
    have_pending_ = false;
    any = true;
  }
  return any;
}

bool SimTapGuest::ring_to_tap() noexcept {
  bool any = false;
  frames_.clear();
  (void)front_.reap_rx(frames_);
  for (const auto& f : frames_) {
    any = true;
    if (f.error != 0 || f.bytes.empty()) {
      ++stats_.rx_errors;
      continue;
    }
    if (::write(tap_, f.bytes.data(), f.bytes.size()) < 0) {
      ++stats_.tap_write_drops;  // as a NIC drops when the host does not read
      continue;
    }
    ++stats_.tap_frames_out;
  }
  return any;
}

bool SimTapGuest::step() noexcept {
  answers_.clear();
  bool any = front_.reap_tx(answers_) > 0;
  for (const auto& a : answers_) {
    if (a.status != NETIF_RSP_OKAY) ++stats_.tx_errors;
  }
  any |= tap_to_ring();
  // Keep the RX ring stocked, as netfront refills after every poll.
  any |= front_.post_rx(256) > 0;
  any |= ring_to_tap();
  return any;
}

void SimTapGuest::wait(std::chrono::milliseconds timeout) noexcept {
  // Drain and unmask the guest's ports first, so the next kick wakes us.
  for (unsigned i = 0; i < 64; ++i) {
    auto p = evtchn_.pending();
    if (!p) break;
    (void)evtchn_.unmask(*p);
  }
  if (front_.arm()) return;
  pollfd fds[2] = {{tap_, have_pending_ ? short{0} : short{POLLIN}, 0}, {evtchn_.fd(), POLLIN, 0}};
  (void)::poll(fds, 2, static_cast<int>(timeout.count()));
}

}  // namespace xenpath::sim
