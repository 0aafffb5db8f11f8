// BackendDriver: the xenbus backend side of a daemon. It finds the devices
// the toolstack gives this domain under /local/domain/<self>/backend/<type>,
// runs each through the xenbus handshake (BackendFsm) and calls the device
// type's connect/disconnect at the right moments.
//
// Cost model (what operators of 1000-VM hosts need): one watch per device
// type plus one per device (the frontend's state node), and while connected
// one per frontend key the device asks for (frontend_watches()), never polling, never
// a directory listing to find a device (only the one-off enumeration at
// start, for devices that appeared while no daemon ran). A watch event's path
// is parsed into (type, frontend domid, devid) and looked up in a hash map;
// a frontend-state event's token names the device directly. Probing reads
// the toolstack's keys and writes the backend's features, hotplug-status and
// InitWait in ONE transaction; a device reads all of its frontend's keys in
// ONE transaction. So the xenstore work for a device is constant whatever
// the number of devices (tests/integration/xenbus_scale_test.cc checks it).
//
// Thread ownership: the driver, its XenStore handle, every BackendDevice and
// every DeviceType call run on one control thread (the Reactor it is
// attached to, or the thread that calls process_events()). Devices hand
// datapath work to worker reactors themselves. stats() may be read from any
// thread. The driver touches no guest memory; its devices do.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/log.h"
#include "common/result.h"
#include "common/stats.h"
#include "common/xen/types.h"
#include "common/xen/xenstore.h"
#include "common/xenbus/backend_fsm.h"
#include "common/xenbus/state.h"

namespace xenpath {

class Reactor;

struct DeviceAddress {
  std::string type;  // xenstore device type ("vbd", "vif", "echo"...)
  DomId frontend_id = kDomidInvalid;
  uint32_t devid = 0;
  std::string backend_path;   // /local/domain/<self>/backend/<type>/<fe>/<devid>
  std::string frontend_path;  // as the toolstack wrote it in <backend>/frontend
};

// One device of one type. Created by its DeviceType during the probe, owned
// by the driver, called only on the driver's thread.
class BackendDevice {
 public:
  virtual ~BackendDevice() = default;
  // Writes the backend's feature keys, inside the probe transaction (before
  // InitWait, so a frontend never sees InitWait without them).
  virtual Status write_backend_features(XenStore& xs, XsTxn t) noexcept = 0;
  // Reads every frontend key the device needs, all in transaction `t` (the
  // driver retries the transaction on EAGAIN, so this may run more than
  // once; it must only store what it reads). Values are guest-written:
  // validate them here or in connect().
  virtual Status read_frontend(XenStore& xs, XsTxn t) noexcept = 0;
  // Maps rings, binds channels, starts queues. On failure the driver calls
  // disconnect(), so a partial connect may leave things for it to release.
  virtual Status connect() noexcept = 0;
  // Idempotent; returns when every mapping and channel is released.
  virtual void disconnect() noexcept = 0;
  // A key directly under the backend directory changed (the toolstack
  // wrote it, or we did: state, features...), e.g. netback's "rate", which
  // Linux re-reads while connected. `key` is the path below the backend
  // directory. Default: ignored.
  virtual void backend_key_changed(XenStore& /*xs*/, std::string_view /*key*/) noexcept {}
  // Frontend keys (paths below the frontend directory) to watch while the
  // device is connected, as a Linux backend registers watches on its other
  // end's nodes when it connects (netback: request-multicast-control). The
  // driver sets them after a successful connect (each fires once at once,
  // so a value written during the connect is not missed) and removes them
  // at disconnect. The span must stay valid while the device lives.
  // Default: none.
  [[nodiscard]] virtual std::span<const std::string_view> frontend_watches() const noexcept { return {}; }
  // One of frontend_watches() (or a node below it) changed while connected;
  // `key` is the path below the frontend directory. The value is
  // guest-written: re-read and validate it. Default: ignored.
  virtual void frontend_key_changed(XenStore& /*xs*/, std::string_view /*key*/) noexcept {}

  // For operators (the stats file, the control socket's list/show): what
  // the device is and its counters, added to `out`. Summary: what the stats
  // file and `list` carry (queues, the image or port, totals and per-queue
  // counters); detail adds what `show` prints (negotiated features, ring
  // orders, persistent grants, mappings). Counters are the queues'
  // single-writer ones, read here as the stats writer reads them. May throw
  // (allocation); the caller catches. Default: nothing.
  virtual void describe(nlohmann::json& /*out*/, bool /*detail*/) const {}
  // A runtime setting from the control socket (`xenpath-ctl set DEV
  // key=value`). Returns what was applied, in words; ENOENT for a key the
  // device does not have, EINVAL for a value it refuses. `xs` is the
  // driver's handle (the device may persist the setting in its backend
  // directory, as a toolstack would). Default: no settings.
  virtual Result<std::string> set_param(XenStore& /*xs*/, std::string_view /*key*/,
                                        std::string_view /*value*/) noexcept {
    return unexpected(ENOENT);
  }
  // The setting keys set_param() knows (for `xenpath-ctl show` and errors).
  [[nodiscard]] virtual std::span<const std::string_view> param_keys() const noexcept { return {}; }
};

class DeviceType {
 public:
  virtual ~DeviceType() = default;
  // The xenstore type this driver serves (configurable by the daemon).
  [[nodiscard]] virtual std::string_view name() const noexcept = 0;
  // Reads the toolstack's keys (params, mode...) in the probe transaction
  // `t` and builds the device. May run more than once for one device when
  // the transaction is retried. ENOENT or EAGAIN mean "not ready yet" (a
  // key the toolstack has not written): the device stays unprobed and is
  // tried again on the next event. Any other error is fatal for the device,
  // as xenbus_dev_fatal() in a Linux backend's probe: the driver writes the
  // error node and switches the backend to Closing, so the toolstack's wait
  // for InitWait fails at once with a reason instead of timing out. A
  // device type whose own resource is missing (an image file that does not
  // exist) must therefore not report it as ENOENT.
  virtual Result<std::unique_ptr<BackendDevice>> create(const DeviceAddress& addr, XenStore& xs, XsTxn t) noexcept = 0;
};

struct BackendDriverStats {
  Counter devices;           // devices known now
  Counter connected;         // devices in Connected now
  Counter probes;            // devices probed successfully (InitWait written)
  Counter probes_ignored;    // probe attempts on absent/not-Initialising backend nodes
  Counter probe_failures;    // devices the type refused (error node + Closing)
  Counter connects;          // successful connects
  Counter connect_failures;  // connects that failed (error node + Closing)
  Counter disconnects;
  Counter destroys;
  Counter protocol_errors;  // frontends that published an invalid state
  Counter watch_events;     // watch events handled
  Counter xs_errors;        // xenstore operations that failed unexpectedly
  Counter release_firings;  // @releaseDomain firings seen
  Counter release_checks;   // deferred checks run (one read per frontend domain served)
  Counter release_reads;    // the reads those checks made
};

class BackendDriver {
 public:
  struct Options {
    DomId self = kDom0;       // the domain whose backend/ tree we serve
    size_t event_batch = 64;  // watch events handled per wake-up
  };

  BackendDriver(std::unique_ptr<XenStore> xs, Options opts) noexcept;
  ~BackendDriver();
  BackendDriver(const BackendDriver&) = delete;
  BackendDriver& operator=(const BackendDriver&) = delete;

  // Before start(). EEXIST for a type served twice, EINVAL for a name that
  // is not a single xenstore path element.
  Status add_type(std::unique_ptr<DeviceType> type) noexcept;

  // Sets the watches (one per type, @releaseDomain). Their initial firing
  // enumerates devices that already exist. Events are handled by
  // process_events(): call it when watch_fd() is readable, or attach().
  Status start() noexcept;
  // `fn` runs once, on the owning thread, when every type's initial
  // listing is done (the devices that existed at start() are probed): the
  // daemon is then ready (systemd's READY=1). Before start().
  void on_enumerated(std::function<void()> fn) noexcept { on_enumerated_ = std::move(fn); }
  // Whether that point has been passed (owning thread).
  [[nodiscard]] bool enumerated() const noexcept;

  // Registers watch_fd() with `reactor` (its thread becomes the owning
  // thread): each wake-up handles one bounded batch; a full batch leaves the
  // fd readable, so the reactor comes back after its other work. Call on
  // the reactor's thread or before it runs; the reactor must outlive the
  // attachment (stop() or detach() ends it).
  Status attach(Reactor& reactor) noexcept;
  void detach() noexcept;

  // A device gave up (a halted queue, a failed backing store): error node,
  // disconnect, Closing, as xenbus_dev_fatal(). Owning thread only; an
  // unknown device is ignored.
  void fail_device(std::string_view type, DomId fe, uint32_t devid, int error) noexcept;
  // The same from any thread (a worker): posted to the attached reactor.
  // False when not attached (stopping, or driven by hand): dropped, since
  // the driver is then disconnecting everything anyway. A device destroyed
  // before the posted work runs is ignored.
  bool report_device_error(std::string_view type, DomId fe, uint32_t devid, int error) noexcept;

  // Disconnects every device (releasing mappings and channels), removes every
  // watch and forgets all devices; xenstore state nodes are left as they are.
  // On the owning thread. Idempotent; the destructor calls it.
  void stop() noexcept;

  // Handles up to event_batch queued watch events; returns how many.
  size_t process_events() noexcept;

  [[nodiscard]] int watch_fd() const noexcept { return xs_->watch_fd(); }
  [[nodiscard]] XenStore& xenstore() noexcept { return *xs_; }
  [[nodiscard]] const BackendDriverStats& stats() const noexcept { return stats_; }
  [[nodiscard]] DomId self() const noexcept { return opts_.self; }

  // Introspection, owning thread only (tests, status reporting).
  [[nodiscard]] size_t device_count() const noexcept { return devices_.size(); }
  [[nodiscard]] std::optional<XenbusState> device_state(std::string_view type, DomId fe, uint32_t devid) const noexcept;
  [[nodiscard]] BackendDevice* device(std::string_view type, DomId fe, uint32_t devid) const noexcept;
  // Every known device (probed, in any state); owning thread only.
  void for_each_device(
      const std::function<void(const DeviceAddress&, XenbusState backend_state, BackendDevice&)>& fn) const;
  // The stats file's entries for the devices of one type: address, backend
  // state (a number) and the device's describe() summary. May throw
  // (allocation); owning thread only.
  [[nodiscard]] nlohmann::json describe_devices(std::string_view type) const;

 private:
  struct TypeEntry {
    std::unique_ptr<DeviceType> type;
    std::string name;
    std::string root;  // <self path>/backend/<name>
    std::string token;
    bool enumerated = false;
    bool watching = false;
  };
  struct Device {
    uint64_t key = 0;
    uint64_t serial = 0;
    uint32_t type_index = 0;
    DeviceAddress addr;
    std::string frontend_state_path;
    std::string token;
    BackendFsm fsm;
    std::unique_ptr<BackendDevice> impl;
    DeviceLog log;
    bool watching = false;
    // frontend_watches() set while connected (full paths), under
    // frontend_key_token.
    std::vector<std::string> key_watches;
    std::string frontend_key_token;
    bool counted_connected = false;
    uint32_t lifecycle_logs = 0;

    Device(BackendFsm f, DeviceLog l) : fsm(f), log(std::move(l)) {}
  };

  static uint64_t make_key(uint32_t type_index, DomId fe, uint32_t devid) noexcept {
    return (static_cast<uint64_t>(type_index) << 48) | (static_cast<uint64_t>(fe) << 32) | devid;
  }

  void handle_event(const XsWatchEvent& ev) noexcept;
  void handle_backend_event(uint32_t type_index, std::string_view path) noexcept;
  void handle_type_root(uint32_t type_index) noexcept;
  void handle_frontend_dir(uint32_t type_index, DomId fe) noexcept;
  void handle_device_event(uint32_t type_index, DomId fe, uint32_t devid, std::string_view sub) noexcept;
  void handle_frontend_state(uint64_t serial) noexcept;
  void handle_frontend_key(uint64_t serial, std::string_view path) noexcept;
  // The frontend's state node or its whole domain is gone: release the
  // device (writing Closed only into a backend node that still exists).
  void frontend_vanished(Device& d) noexcept;
  void watch_frontend_keys(Device& d) noexcept;
  void unwatch_frontend_keys(Device& d) noexcept;
  void handle_release_domain(uint64_t firings) noexcept;
  void run_release_check() noexcept;
  void enumerate(uint32_t type_index) noexcept;
  void probe(uint32_t type_index, DomId fe, uint32_t devid) noexcept;
  void fail_probe(const DeviceAddress& addr, int error) noexcept;

  // Runs `actions` for `d` in order; destroys `d` when told to (the caller
  // must not touch `d` afterwards: returns false then). write=false skips
  // the xenstore writes (the node belongs to someone else now).
  bool apply(Device& d, const FsmActions& actions, bool write = true) noexcept;
  // false: the node was re-created by the toolstack (nothing written).
  Result<bool> write_checked(Device& d, const FsmAction* first, const FsmAction* last) noexcept;
  int do_connect(Device& d) noexcept;
  void do_disconnect(Device& d) noexcept;
  void destroy(Device& d) noexcept;
  void update_connected(Device& d) noexcept;
  void lifecycle_log(Device& d, std::string_view what) noexcept;

  static constexpr uint32_t kLifecycleLogsAtInfo = 16;

  std::unique_ptr<XenStore> xs_;
  Options opts_;
  std::string self_path_;
  std::vector<TypeEntry> types_;
  std::unordered_map<uint64_t, std::unique_ptr<Device>> devices_;  // by make_key()
  std::unordered_map<uint64_t, Device*> by_serial_;                // frontend-state tokens
  std::unordered_map<DomId, std::unordered_set<Device*>> by_frontend_;
  uint64_t next_serial_ = 1;
  // Undo attach() / post to the attached reactor (backend_driver_reactor.cc);
  // empty when not attached. post_ is read by other threads
  // (report_device_error), hence its lock.
  std::function<void()> detach_;
  std::function<void()> on_enumerated_;
  std::mutex post_mu_;
  std::function<bool(std::function<void()>)> post_;
  // Posted tasks hold a weak reference: one that runs after the driver is
  // gone does nothing.
  std::shared_ptr<BackendDriver*> alive_ = std::make_shared<BackendDriver*>(this);
  bool started_ = false;
  bool watching_release_ = false;
  // A deferred @releaseDomain check is due (attached mode): since when, the
  // firings it covers, and how to arm its one-shot timer (empty when not
  // attached: checks run at once).
  bool release_pending_ = false;
  uint64_t release_firings_ = 0;  // since the last check
  std::chrono::steady_clock::time_point release_first_{};
  std::function<bool(std::chrono::steady_clock::time_point)> arm_release_;
  std::vector<XsWatchEvent> batch_;
  DeviceLog log_{"xenbus: "};
  BackendDriverStats stats_;
};

}  // namespace xenpath
