// The "vbd" device type: blkback's xenbus side, over BackendDriver.
//
// Toolstack keys (backend directory, as xl/libxl write them):
//   params        the image: "<format>:<path>" with format raw, aio, file,
//                 phy (raw) or vhd (qdisk style), or a bare path whose
//                 format is detected from the file (image_open.h); other
//                 formats (qcow2, vhdx...) are refused with EOPNOTSUPP
//   mode          "r" (read-only) or "w"/"w!" (read-write)
//   type          "phy", "file"... (informational: the path decides)
//   discard-enable  0 to withhold discard from the guest (default 1)
//   cache         0 to keep this VBD's image out of the daemon's shared read
//                 cache (default 1: its immutable levels go through it when
//                 the daemon has one; docs/cache.md). `xenpath-ctl set
//                 DEV cache=on|off` writes it and applies it at once.
//   qos-read-iops, qos-write-iops, qos-read-bps, qos-write-bps, qos-burst-ms
//                 QoS limits (blk_qos.h; absent or 0: unlimited; malformed:
//                 unlimited, logged, as netback treats "rate"), read at
//                 create, watched and applied to the queues while connected
// and the frontend's device-type ("cdrom" sets VDISK_CDROM).
//
// Backend keys, written before InitWait in the probe transaction:
//   feature-max-indirect-segments, max-ring-page-order,
//   multi-queue-max-queues, feature-persistent, feature-flush-cache,
//   feature-barrier, feature-discard (+ discard-granularity,
//   discard-alignment, discard-secure), sectors, info, sector-size,
//   physical-sector-size.
// As Linux blkback: "sectors" and every sector quantity on the ring are in
// 512-byte units whatever "sector-size" says (Linux blkfront reads them so);
// a 4K-sector image makes the queue require 4K-aligned requests.
//
// Frontend keys, read in one transaction: protocol, feature-persistent,
// multi-queue-num-queues, ring-page-order, then per queue (top level for
// one queue, queue-%u/ for several) ring-ref / ring-ref%u and
// event-channel. Every value is guest input: strictly parsed and bounded.
//
// Threads: a VbdDevice is owned by the driver's control thread; its queues
// live on worker reactors (BlkWorker), started and stopped through
// Reactor::call. Device stats are single-writer counters of the queues'
// workers, readable anywhere. Guest memory: through its queues only.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "blkback/blk_queue.h"
#include "blkback/image.h"
#include "common/log.h"
#include "common/xenbus/backend_driver.h"

namespace xenpath {

class BlockCache;
struct ProbeGuard;

// Where a device reports that it cannot go on (a halted queue); called on a
// worker thread. The daemon wires it to BackendDriver::report_device_error.
using VbdErrorSink = std::function<void(const DeviceAddress&, int error)>;

// "<format>:<path>" or a path. Exposed for tests.
struct VbdParams {
  std::string path;
  std::string format = "raw";  // "raw", "vhd", or "auto" (a bare path: detect)
};
Result<VbdParams> parse_vbd_params(std::string_view params) noexcept;

// The qos-* keys under `backend` (absent: 0). A malformed one counts as
// unlimited and is logged on `log`; store errors pass through.
Result<QosLimits> read_vbd_qos(XenStore& xs, XsTxn t, std::string_view backend, DeviceLog& log) noexcept;

// Opens a device's image from its parsed params. The default (an empty
// function) is open_vbd_image (RawImage or VhdImage), O_DIRECT unless
// VbdOptions::direct is off; tools substitute other images (the load
// generator's NullImage).
using VbdImageOpener = std::function<Result<std::unique_ptr<Image>>(const VbdParams& params, bool read_only)>;

struct VbdOptions {
  std::string type_name = "vbd";
  unsigned max_ring_order = 4;  // max-ring-page-order
  unsigned max_queues = 0;      // 0: one per worker
  uint32_t max_indirect_segments = kBlkDefaultMaxIndirectSegments;
  bool persistent = true;  // offer feature-persistent
  bool direct = true;      // O_DIRECT images
  // A bare path in params: read the file to tell VHD from raw (as libxl's
  // phy backend only writes format=raw paths). Off: bare paths are raw, and
  // VHD needs "vhd:" (docs/blkback.md, "Format detection and trust").
  bool probe_format = true;
  uint32_t persistent_max_pages = 0;  // per queue; 0: max(1056, RING_SIZE * 11)
  // Bounded wait for in-flight I/O at disconnect before giving up on a
  // queue (the kernel still owns its pages; it is kept, not unmapped).
  std::chrono::milliseconds drain_timeout{30'000};
  VbdImageOpener open_image;  // empty: open_vbd_image
  // The shared read cache (docs/cache.md): budget in MiB (0: none) and block
  // size in KiB, for BlkbackService to create it; `cache` is the one it
  // created (outlives every device), handed to open_vbd_image.
  uint64_t cache_mib = 0;
  uint32_t cache_block_kib = 64;
  BlockCache* cache = nullptr;
};

class VbdDevice final : public BackendDevice {
 public:
  VbdDevice(const DeviceAddress& addr, const VbdOptions& opts, std::vector<BlkWorker*> workers,
            std::unique_ptr<Image> image, bool read_only, bool cdrom, bool discard_enable, VbdErrorSink sink) noexcept;
  ~VbdDevice() override;

  Status write_backend_features(XenStore& xs, XsTxn t) noexcept override;
  Status read_frontend(XenStore& xs, XsTxn t) noexcept override;
  Status connect() noexcept override;
  void disconnect() noexcept override;
  // Summary: image, size, totals and per-queue counters (the stats file's
  // entry); detail: the negotiated protocol and features, ring orders and
  // event channels, persistent grants and grant mapping per queue, errors by
  // reason.
  void describe(nlohmann::json& out, bool detail) const override;
  // A qos-* key changed: re-read all of them and hand them to every queue.
  void backend_key_changed(XenStore& xs, std::string_view key) noexcept override;
  // qos-* keys (blk_qos.h), written to the backend directory as the
  // toolstack would; the watch applies them (backend_key_changed), and
  // xenstore keeps them across reconnects and daemon restarts. And `cache`
  // (set_cache).
  Result<std::string> set_param(XenStore& xs, std::string_view key, std::string_view value) noexcept override;
  [[nodiscard]] std::span<const std::string_view> param_keys() const noexcept override;
  // Control thread: the limits in force; connected queues get them through
  // their worker's mailbox (Reactor::call).
  void apply_qos(const QosLimits& limits) noexcept;
  // `cache` = on|off: the shared read cache for this VBD at runtime
  // (Image::set_cache_enabled, at once: a relaxed flag the channels read per
  // piece) and the backend key `cache` the next create reads (so a
  // reconnect or a restarted daemon keeps it).
  Result<std::string> set_cache(XenStore& xs, std::string_view value) noexcept;
  [[nodiscard]] const QosLimits& qos() const noexcept { return qos_; }

  [[nodiscard]] bool connected() const noexcept { return connected_.load(std::memory_order_acquire); }
  [[nodiscard]] size_t queue_count() const noexcept { return stats_.size(); }
  // Per queue, valid while connected (and until the next connect).
  [[nodiscard]] const VbdQueueStats& queue_stats(size_t i) const noexcept { return *stats_[i]; }
  [[nodiscard]] const VbdLimits& limits() const noexcept { return limits_; }
  [[nodiscard]] const Image& image() const noexcept { return *image_; }
  // Before connect: the image is a bare path probed as raw; its queues
  // refuse writes that would make it probe as VHD (image_open.h).
  void guard_probed_raw(std::unique_ptr<ProbeGuard> guard) noexcept;
  [[nodiscard]] const ProbeGuard* probe_guard() const noexcept { return guard_.get(); }

 private:
  struct FrontQueue {
    std::vector<GrantRef> refs;
    EvtchnPort port = 0;
  };

  DeviceAddress addr_;
  VbdOptions opts_;
  std::vector<BlkWorker*> workers_;
  std::unique_ptr<Image> image_;
  std::unique_ptr<ProbeGuard> guard_;  // a probed raw image's (shared by the queues)
  VbdLimits limits_;
  QosLimits qos_;
  bool cdrom_;
  VbdErrorSink sink_;
  DeviceLog log_;
  unsigned max_queues_;

  // What read_frontend() found (stored only; validated there).
  BlkProtocol protocol_ = BlkProtocol::kNative;
  bool persistent_ = false;
  std::vector<FrontQueue> front_;

  // Queues: created and destroyed on their workers; the control thread only
  // holds the pointers.
  std::vector<std::unique_ptr<VbdQueue>> queues_;
  std::vector<BlkWorker*> queue_workers_;
  std::vector<std::unique_ptr<VbdQueueStats>> stats_;
  std::atomic<bool> connected_{false};
};

class VbdDeviceType final : public DeviceType {
 public:
  // Queues are spread over `workers` (which must outlive every device).
  VbdDeviceType(std::vector<BlkWorker*> workers, VbdOptions opts = {}, VbdErrorSink sink = {}) noexcept
      : workers_(std::move(workers)), opts_(std::move(opts)), sink_(std::move(sink)) {}

  [[nodiscard]] std::string_view name() const noexcept override { return opts_.type_name; }
  // Reads params/mode/discard-enable and the frontend's device-type, opens
  // the image. ENOENT while the toolstack has not written params yet.
  Result<std::unique_ptr<BackendDevice>> create(const DeviceAddress& addr, XenStore& xs, XsTxn t) noexcept override;

 private:
  std::vector<BlkWorker*> workers_;
  VbdOptions opts_;
  VbdErrorSink sink_;
  size_t next_ = 0;
};

}  // namespace xenpath
