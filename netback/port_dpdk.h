// The DPDK adapter: EAL in-process, packet pools, and ports. The only code
// that includes rte_*.h is the adapter's port_dpdk*.cc (env: EAL; pool:
// mempools and segmentation; packet: the pkt:: API and GRO; port_dpdk.cc:
// ethdev ports) and its private port_dpdk_internal.h; this header stays free
// of DPDK types so the rest of netback (and its tests) sees only port.h.
// The offload rules themselves (checksums, GRO grouping) are net_offload.h.
//
// DpdkEnv is the process-wide EAL (rte_eal_init can run once per process).
// Its control methods (pools, ports) may be called from any thread and are
// serialised by an internal lock; ethdev control operations are not
// thread-safe in DPDK, so nothing else may configure ports behind its back.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "common/xen/types.h"
#include "netback/port.h"

namespace xenpath {

struct DpdkEnvOptions {
  // The complete EAL argument list (without argv[0]). Empty: the defaults
  // below, built by dpdk_default_eal_args().
  std::vector<std::string> eal_args;
  // Defaults: EAL memory without hugepages (--no-huge -m). Must hold every
  // pool (a 2 KiB-buffer mbuf costs about 2.3 KiB) plus DPDK's own heap.
  unsigned memory_mb = 256;
  // PCI devices (BDF, e.g. "0000:03:00.0") the daemon may take; none means
  // --no-pci, so EAL never grabs a NIC an operator did not name.
  std::vector<std::string> pci_allow;
  // Extra "--log-level=" value (e.g. "pmd.net.tap:debug"), empty for none.
  std::string log_level;
};

// --no-huge --no-shconf -m <memory_mb> --no-telemetry, the main lcore mapped
// to the caller's whole CPU set (EAL would otherwise pin the calling thread
// to one CPU), and --no-pci or one -a per allowed PCI device. --in-memory is
// deliberately absent: it needs hugepages.
std::vector<std::string> dpdk_default_eal_args(const DpdkEnvOptions& opts);

struct DpdkPoolConfig {
  std::string name = "xp";      // prefix of the mempool names (made unique)
  uint32_t packets = 8191;      // buffers with data room (2^n - 1 suits rte_ring)
  uint32_t attachments = 8191;  // data-less buffers: external pages, GSO payload refs
  uint32_t cache = 128;         // per-lcore cache (threads need rte_thread_register)
  uint16_t data_room = 2048;    // bytes after the headroom
};

// Device arguments: "<name>[,key=value...]". A name starting with a DPDK
// virtual driver name creates that vdev (net_tap, net_af_packet, net_memif,
// net_ring, net_null...); a PCI address probes a physical NIC (it must be in
// DpdkEnvOptions::pci_allow).
struct DpdkPortConfig {
  std::string devargs;
  uint16_t rx_queues = 1;
  uint16_t tx_queues = 1;
  uint16_t rx_desc = 512;
  uint16_t tx_desc = 512;
  // Use the TSO and checksum offloads the device offers; off = everything
  // in software (for devices whose offloads misbehave).
  bool hw_offloads = true;
  // The receiver is in this process and reads PacketMeta (net_ring between
  // our own ports): pending checksum/segmentation work travels with the
  // packet instead of being done here, as Linux hands CHECKSUM_PARTIAL and
  // GSO skbs from one vif to another.
  bool pass_metadata = false;
  uint32_t mtu = 0;  // 0: leave the device's
  // Software GSO produces at most this many segments per packet; a packet
  // needing more (a tiny MSS) is dropped: a guest must not make one request
  // cost thousands of buffers.
  uint16_t gso_max_segments = 512;
  // Receive interrupts (PacketPort::rx_wait_fd) where the driver has them
  // in a form the reactor can poll (net_tap); others are polled.
  bool rx_interrupts = true;
  // Take whole GSO packets on receive where the device offers them
  // (RTE_ETH_RX_OFFLOAD_TCP_LRO: virtio's guest TSO, which is the host
  // kernel's GSO, not a NIC merging frames); needs hw_offloads.
  bool rx_gso = true;
};

// "{domid}", "{devid}" and "{queues}" (the queue pairs the port is opened
// with) in `tmpl` replaced by their decimal values (kernel netback names its
// interfaces vif<domid>.<devid>). EINVAL on any other "{...}" or an
// unbalanced brace, so a typo in the configuration fails loudly instead of
// creating oddly named devices.
Result<std::string> expand_devargs(std::string_view tmpl, DomId domid, uint32_t devid, uint16_t queues = 1);

// The VIF port into dom0's stack through vhost-net (DPDK's "exception
// path"): virtio_user opens the tap with IFF_VNET_HDR, so TSO and checksum
// offloads cross it both ways and frames move through virtqueues served by
// a vhost kernel thread, one eventfd kick per burst instead of a system call
// per frame. cq=1: virtio_user wants its (emulated) control queue for more
// than one queue pair. mrg_rxbuf=1: host GSO packets arrive whole.
inline constexpr std::string_view kVhostNetVifDevargs =
    "net_virtio_user_vif{domid}_{devid},path=/dev/vhost-net,iface=vif{domid}.{devid},queues={queues},cq=1,"
    "queue_size=1024,mrg_rxbuf=1";
// The fallback: net_tap, no IFF_VNET_HDR (one writev per MTU frame, guest
// GSO segmented in software, dom0's TSO skbs cut into frames).
inline constexpr std::string_view kTapVifDevargs = "net_tap_vif{domid}_{devid},iface=vif{domid}.{devid}";
// Whether /dev/vhost-net can be opened read-write here (the vhost_net
// module loaded, the caller privileged enough); `why` gets the reason when not.
bool vhost_net_usable(std::string* why = nullptr) noexcept;
// kVhostNetVifDevargs when vhost_net_usable(), else kTapVifDevargs (`why`
// then says why not).
std::string_view default_vif_devargs(std::string* why = nullptr) noexcept;

class DpdkEnv {
 public:
  // Initialises EAL on the first call (later calls return the same
  // environment and ignore their options, or the first call's error).
  // The calling thread becomes EAL's main lcore; its CPU affinity is kept.
  static Result<DpdkEnv*> init(const DpdkEnvOptions& opts = {}) noexcept;
  // nullptr until init() succeeded.
  static DpdkEnv* get() noexcept;

  [[nodiscard]] const std::vector<std::string>& eal_args() const noexcept { return args_; }

  // Gives the calling (non-EAL) thread an lcore id, so pool caches and
  // per-lcore DPDK state apply to it. Each datapath thread calls it once
  // before its first burst and unregister_thread() before it exits.
  Status register_thread() noexcept;
  void unregister_thread() noexcept;

  Result<std::unique_ptr<PacketPool>> create_pool(const DpdkPoolConfig& cfg) noexcept;
  // `pool` must come from create_pool() and outlive the port (receive
  // queues allocate from it; software GSO and linearisation too).
  Result<std::unique_ptr<PacketPort>> open_port(PacketPool& pool, const DpdkPortConfig& cfg) noexcept;
  // Two net_ring ports wired back to back ("net_ring_<name>_a" transmits
  // to "net_ring_<name>_b" and the other way round), one queue each: an in-process wire,
  // e.g. between a vif and a test peer. `base` gives the rest of the config.
  Result<std::array<std::unique_ptr<PacketPort>, 2>> open_ring_pair(PacketPool& pool, const std::string& name,
                                                                    const DpdkPortConfig& base) noexcept;

  // DPDK's ethdev table: every port (a VIF's, each end of a ring pair)
  // takes one of RTE_MAX_ETHPORTS slots for its life, and the table is
  // fixed when DPDK is built (32 in Debian's DPDK 22.11), so one process
  // holds at most that many ports: with a port per VIF, one xenpath-netback
  // serves at most port_capacity() VIFs (docs/netback-perf.md, "How many
  // VIFs"). open_port() and open_ring_pair() refuse with ENOSPC, before
  // probing anything, when the table has no room left.
  [[nodiscard]] static unsigned port_capacity() noexcept;
  [[nodiscard]] unsigned ports_in_use() noexcept;

  // Serialises ethdev control operations (ports' constructors/destructors).
  std::mutex& control_lock() noexcept { return control_; }

 private:
  explicit DpdkEnv(std::vector<std::string> args) : args_(std::move(args)) {}
  std::vector<std::string> args_;
  std::mutex control_;
};

}  // namespace xenpath
