#include "sim/net/sim_tap_guest.h"

#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace xenpath::sim {

namespace {

// struct virtio_net_hdr as tun/tap exchanges it (host byte order: the
// legacy header, no TUNSETVNETLE/BE). <linux/virtio_net.h> is not valid C++.
struct VnetHdr {
  uint8_t flags;
  uint8_t gso_type;
  uint16_t hdr_len;
  uint16_t gso_size;
  uint16_t csum_start;
  uint16_t csum_offset;
};
static_assert(sizeof(VnetHdr) == 10);
constexpr uint8_t kVnetNeedsCsum = 1;  // kVnetNeedsCsum
constexpr uint8_t kVnetDataValid = 2;  // kVnetDataValid
constexpr uint8_t kVnetGsoNone = 0;    // VIRTIO_NET_HDR_GSO_*
constexpr uint8_t kVnetGsoTcp4 = 1;
constexpr uint8_t kVnetGsoTcp6 = 4;
constexpr uint8_t kVnetGsoEcn = 0x80;

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

Result<int> open_tap(const std::string& name, const std::string& netns, bool vnet_hdr) noexcept {
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
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (vnet_hdr ? IFF_VNET_HDR : 0);
  std::memcpy(ifr.ifr_name, name.c_str(), name.size());
  if (::ioctl(tap.get(), TUNSETIFF, &ifr) != 0) return unexpected_errno();
  if (vnet_hdr) {
    int hdr = sizeof(VnetHdr);
    if (::ioctl(tap.get(), TUNSETVNETHDRSZ, &hdr) != 0) return unexpected_errno();
    // What netfront offers by default: checksum offload and TCP GSO.
    const unsigned long off = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
    if (::ioctl(tap.get(), TUNSETOFFLOAD, off) != 0) return unexpected_errno();
  }
  return tap.release();
}

SimTapGuest::SimTapGuest(SimNetfront& front, EventChannel& evtchn, int tap_fd, bool vnet_hdr) noexcept
    : front_(front), evtchn_(evtchn), tap_(tap_fd), vnet_(vnet_hdr) {
  try {
    // A GSO frame from the kernel may exceed what netif carries; reading it
    // whole lets us count and drop it instead of truncating it.
    buf_.resize(sizeof(VnetHdr) + 2 * kMaxFrame);
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

// The frame just read into buf_ (n bytes) as a TX request; false when it
// cannot be carried (counted).
bool SimTapGuest::to_tx_frame(size_t n) noexcept {
  const size_t hl = vnet_ ? sizeof(VnetHdr) : 0;
  if (n <= hl) return false;
  if (n - hl > kMaxFrame) {
    ++stats_.oversize_drops;
    return false;
  }
  pending_.csum_blank = false;
  pending_.data_validated = false;
  pending_.gso_type = XEN_NETIF_GSO_TYPE_NONE;
  pending_.gso_size = 0;
  if (vnet_) {
    VnetHdr h;
    std::memcpy(&h, buf_.data(), sizeof h);
    // netfront: CHECKSUM_PARTIAL -> csum_blank | data_validated.
    if ((h.flags & kVnetNeedsCsum) != 0) pending_.csum_blank = pending_.data_validated = true;
    else if ((h.flags & kVnetDataValid) != 0) pending_.data_validated = true;
    switch (h.gso_type & ~kVnetGsoEcn) {
      case kVnetGsoNone:
        break;
      case kVnetGsoTcp4:
        pending_.gso_type = XEN_NETIF_GSO_TYPE_TCPV4;
        pending_.gso_size = h.gso_size;
        break;
      case kVnetGsoTcp6:
        pending_.gso_type = XEN_NETIF_GSO_TYPE_TCPV6;
        pending_.gso_size = h.gso_size;
        break;
      default:
        ++stats_.bad_offload;  // UFO and others were not offered
        return false;
    }
    if (pending_.gso_type != XEN_NETIF_GSO_TYPE_NONE && pending_.gso_size == 0) {
      ++stats_.bad_offload;
      return false;
    }
  }
  try {
    pending_.bytes.assign(buf_.begin() + static_cast<ptrdiff_t>(hl), buf_.begin() + static_cast<ptrdiff_t>(n));
  } catch (...) {
    return false;
  }
  return true;
}

bool SimTapGuest::tap_to_ring() noexcept {
  bool any = false;
  for (unsigned i = 0; i < kStepFrames; ++i) {
    if (!have_pending_) {
      const ssize_t n = ::read(tap_, buf_.data(), buf_.size());
      if (n <= 0) break;  // EAGAIN (or the tap went away)
      any = true;
      if (!to_tx_frame(static_cast<size_t>(n))) continue;
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

namespace {

// Where the L4 header starts in an Ethernet frame and which protocol it is
// (IPv4 with options, IPv6 without extension headers, one VLAN tag): what a
// NEEDS_CSUM header must say. False for anything else.
bool l4_of(const std::vector<uint8_t>& f, size_t& l4, uint8_t& proto) noexcept {
  size_t off = 12;
  if (f.size() < off + 2) return false;
  uint16_t type = static_cast<uint16_t>((f[off] << 8) | f[off + 1]);
  off += 2;
  if (type == 0x8100) {
    if (f.size() < off + 4) return false;
    type = static_cast<uint16_t>((f[off + 2] << 8) | f[off + 3]);
    off += 4;
  }
  if (type == 0x0800) {
    if (f.size() < off + 20) return false;
    proto = f[off + 9];
    l4 = off + (f[off] & 0xfu) * 4u;
  } else if (type == 0x86dd) {
    if (f.size() < off + 40) return false;
    proto = f[off + 6];
    l4 = off + 40;
  } else {
    return false;
  }
  return (proto == 6 || proto == 17) && l4 < f.size();
}

}  // namespace

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
    VnetHdr h{};
    if (vnet_) {
      if ((f.flags & NETRXF_csum_blank) != 0) {
        size_t l4 = 0;
        uint8_t proto = 0;
        if (!l4_of(f.bytes, l4, proto)) {
          ++stats_.bad_offload;
          continue;
        }
        h.flags = kVnetNeedsCsum;
        h.csum_start = static_cast<uint16_t>(l4);
        h.csum_offset = proto == 6 ? 16 : 6;
      } else if ((f.flags & NETRXF_data_validated) != 0) {
        h.flags = kVnetDataValid;
      }
      if (f.gso_type == XEN_NETIF_GSO_TYPE_TCPV4 || f.gso_type == XEN_NETIF_GSO_TYPE_TCPV6) {
        h.gso_type = f.gso_type == XEN_NETIF_GSO_TYPE_TCPV4 ? kVnetGsoTcp4 : kVnetGsoTcp6;
        h.gso_size = f.gso_size;
      }
    } else if ((f.flags & NETRXF_csum_blank) != 0) {
      ++stats_.bad_offload;  // the backend should have completed it
      continue;
    }
    iovec iov[2] = {{&h, sizeof h}, {const_cast<uint8_t*>(f.bytes.data()), f.bytes.size()}};
    const ssize_t w = vnet_ ? ::writev(tap_, iov, 2) : ::writev(tap_, iov + 1, 1);
    if (w < 0) {
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
