// SimTapGuest: a simulated guest whose netfront is bridged to a Linux tap
// device, so real programs (ping, iperf3) in the tap's network namespace
// talk through the netif rings, the grant table and the backend:
//   frames the kernel sends on the tap  -> guest TX ring (SimNetfront::send)
//   frames the backend puts on RX ring  -> written to the tap
// Without a vnet header the kernel hands over whole, checksummed frames and
// expects the same back: configure the backend with rx_csum_offload = false
// and no RX GSO. With one (IFF_VNET_HDR, TUNSETOFFLOAD csum + TSO4/6) the
// guest behaves like Linux netfront with its default offloads: the kernel's
// partial checksums and TCP GSO frames (up to 64 KiB) become csum_blank and
// GSO extras on the TX ring, and csum_blank / data_validated / GSO on the RX
// ring become the header's NEEDS_CSUM / DATA_VALID / gso fields.
//
// Owned by one thread (the simulated guest's), which calls step()/wait();
// touches the guest's own memory through SimNetfront and the tap fd.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/result.h"
#include "common/xen/event_channel.h"
#include "sim/net/sim_netfront.h"

namespace xenpath::sim {

// Opens (creating) tap `name` in network namespace `netns` (a name under
// /run/netns, a path, or empty for the caller's namespace). The device lives
// in that namespace; the returned fd (non-blocking) works from anywhere.
// The calling thread's namespace is restored before returning.
// `vnet_hdr`: frames carry a struct virtio_net_hdr and the kernel may send
// partial checksums and TCP GSO frames.
Result<int> open_tap(const std::string& name, const std::string& netns, bool vnet_hdr = false) noexcept;

struct SimTapGuestStats {
  uint64_t tap_frames_in = 0;    // read from the tap, queued on the TX ring
  uint64_t tap_frames_out = 0;   // received on the RX ring, written to the tap
  uint64_t tx_errors = 0;        // TX answers other than OKAY
  uint64_t rx_errors = 0;        // RX packets with an error status
  uint64_t tap_write_drops = 0;  // the tap refused a frame (its queue was full)
  uint64_t oversize_drops = 0;   // frames larger than the ring can carry
  uint64_t bad_offload = 0;      // vnet header / RX flags it could not translate
};

class SimTapGuest {
 public:
  // `front` and `evtchn` (the guest's handle the frontend uses) must
  // outlive this. Takes ownership of `tap_fd`, opened by open_tap() with
  // the same `vnet_hdr`.
  SimTapGuest(SimNetfront& front, EventChannel& evtchn, int tap_fd, bool vnet_hdr = false) noexcept;
  ~SimTapGuest();
  SimTapGuest(const SimTapGuest&) = delete;
  SimTapGuest& operator=(const SimTapGuest&) = delete;

  // One bounded pass both ways; true when anything moved.
  bool step() noexcept;
  // Re-arms the rings and sleeps until the tap or the event channel has
  // something, at most `timeout` (returns at once if responses raced in).
  void wait(std::chrono::milliseconds timeout) noexcept;

  [[nodiscard]] const SimTapGuestStats& stats() const noexcept { return stats_; }
  [[nodiscard]] int tap_fd() const noexcept { return tap_; }

 private:
  bool tap_to_ring() noexcept;
  bool ring_to_tap() noexcept;
  bool to_tx_frame(size_t n) noexcept;

  SimNetfront& front_;
  EventChannel& evtchn_;
  int tap_ = -1;
  bool vnet_ = false;
  std::vector<uint8_t> buf_;      // one read from the tap (vnet header + frame)
  SimNetfront::TxFrame pending_;  // read from the tap, the ring was full
  bool have_pending_ = false;
  std::vector<netif_tx_response> answers_;
  std::vector<SimNetfront::RxFrame> frames_;
  SimTapGuestStats stats_;
};

}  // namespace xenpath::sim
