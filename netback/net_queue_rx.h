// The guest RX path of one VIF queue: the port to the RX ring.
//
// Packets from the port (TCP frames of a burst coalesced into GSO packets
// for a frontend that takes them, see VifQueueConfig::rx_gro; GSO kept for a
// frontend that negotiated it, else segmented; checksums completed for a
// frontend without checksum offload; multicast filtered against the VIF's
// list when the frontend asked for it) are planned against the guest's
// posted buffers (net_protocol_rx.h) and copied with ONE grant copy call per
// burst; responses go in the requests' slots.
//
// Packets wait for guest buffers at most rx_drain_timeout; a guest that
// posts none for rx_stall_timeout while packets wait is stalled (carrier
// off: queued and new packets dropped and counted, logged once) until it
// posts again, so a silent guest costs bounded host memory (Linux's
// rx_drain_timeout / rx_stall_timeout). With the guest's hash mapping
// (control ring) a received flow may belong to another queue of the VIF:
// it is handed over through that queue's inbox. Ports with a receive
// wake-up fd (net_tap) are slept on instead of polled.
//
// Threads: owned and driven by its VifQueue on the queue's reactor thread;
// the steering inboxes take pushes from any thread (Mailbox). Guest memory:
// the RX ring page; packet data reaches the guest only through grant copy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "common/ring.h"
#include "common/xen/grant_table.h"
#include "netback/net_ctrl.h"
#include "netback/net_protocol_rx.h"
#include "netback/net_queue_core.h"
#include "netback/net_rate.h"

namespace xenpath {

class VifRxPath {
 public:
  explicit VifRxPath(VifQueueCore& core) noexcept : core_(core) {}
  VifRxPath(const VifRxPath&) = delete;
  VifRxPath& operator=(const VifRxPath&) = delete;
  ~VifRxPath();

  // Maps and attaches the RX ring, sizes every buffer, watches the
  // steering inbox and the port's receive wake-up fd.
  Status init() noexcept;
  void teardown() noexcept;

  // Steered packets, a port burst, the drain/stall timers, then delivery
  // into the guest's posted buffers.
  bool poll() noexcept;
  // Gives back every packet held for the guest, steered to or from this
  // queue, or waiting in the port's queue (bounded) (stop()).
  void drop_queued() noexcept;
  // Pushes the responses made since the last call; true if there were
  // any, `notify` whether the frontend wants an event.
  bool publish(bool& notify) noexcept { return flush_responses(ring_, responses_, notify); }

  // Whether the reactor waits on the port's receive fd (else it wakes
  // periodically to poll the port).
  [[nodiscard]] bool has_wait_fd() const noexcept { return fd_ >= 0; }
  // Before the reactor sleeps: the port's fd stays readable while frames
  // wait in it, so it is watched only while we would take them.
  void update_wait_fd(bool halted) noexcept;
  [[nodiscard]] bool again() const noexcept { return again_; }
  // Steered packets are waiting in this queue's inbox.
  [[nodiscard]] bool inbox_pending() const noexcept;
  // Packets wait for guest buffers and the guest posted some
  // (RING_FINAL_CHECK_FOR_REQUESTS).
  bool final_check() noexcept;

  void set_hash(std::shared_ptr<const NetifCtrl> hash) noexcept { hash_ = std::move(hash); }
  void set_multicast_control(bool on) noexcept { core_.config.multicast_control = on; }
  [[nodiscard]] bool stalled() const noexcept { return stalled_; }
  [[nodiscard]] size_t queued() const noexcept { return len_; }

 private:
  using TimePoint = RateLimiter::Clock::time_point;

  void fetch() noexcept;
  void queue(PacketBuf* p, TimePoint now) noexcept;
  void admit(PacketBuf* p, const FrameHash* hash, TimePoint now) noexcept;
  void flush_steered() noexcept;
  bool take_steered() noexcept;
  void push(PacketBuf* p, const FrameHash* hash, TimePoint now) noexcept;
  void pop() noexcept;
  void drop_all() noexcept;
  bool check_stall(TimePoint now) noexcept;
  bool deliver() noexcept;

  VifQueueCore& core_;
  GrantMapping ring_map_;
  BackRing<NetifRxRing> ring_;
  bool responses_ = false;
  bool again_ = false;

  std::vector<netif_rx_request> carry_;
  unsigned carry_len_ = 0;
  std::vector<PacketBuf*> pkts_;  // FIFO ring of packets for the guest
  struct Info {
    TimePoint queued{};
    FrameHash hash{};
    bool has_hash = false;
  };
  std::vector<Info> info_;  // parallel to pkts_
  size_t head_ = 0;
  size_t len_ = 0;
  std::shared_ptr<const NetifCtrl> hash_;
  std::vector<SteeredRx> steer_out_;  // per target queue, flushed after each fetch
  bool watching_inbox_ = false;
  bool stalled_ = false;
  int fd_ = -1;  // the port queue's receive wake-up, or -1
  bool fd_watched_ = false;
  TimePoint progress_{};  // last time the guest's buffers let us deliver
  BurstCopies copies_;
  std::vector<netif_rx_response> rsps_;
  std::unique_ptr<RxBatch> batch_;
  std::vector<PacketSegment> segs_;
  std::vector<PacketBuf*> scratch_;
};

}  // namespace xenpath
