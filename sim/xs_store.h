// XsStore: the simulated xenstored's database and its semantics, with no
// threads, sockets or locks, so every rule can be unit tested directly.
//
// Semantics follow C xenstored (tools/xenstore/xenstored_*.c, Xen 4.17) as
// libxenstore and xenstore-utils see them:
// - Paths: absolute "/a/b", or relative to /local/domain/<connection domid>.
//   Validation as is_valid_nodename(): [A-Za-z0-9-/_@], no "//", no trailing
//   '/', at most XENSTORE_REL_PATH_MAX characters after a leading
//   "/local/domain/<id>/" (and never more than XENSTORE_ABS_PATH_MAX).
// - Permissions: a list per node whose first entry is the owner plus the
//   access of every domain not listed. Privileged connections (dom0) and the
//   owner (or a domain whose target is the owner) get everything. New nodes
//   inherit the parent's list; an unprivileged creator becomes the owner. A
//   missing node reports ENOENT only when the nearest existing ancestor
//   grants the access asked for, EACCES otherwise, so unprivileged callers
//   learn nothing about nodes they may not see.
// - rm of a missing node succeeds when its parent exists (as xenstored and
//   xs_rm document), ENOENT otherwise; rm of "/" is EINVAL.
// - Transactions are optimistic. Every node a transaction touches is noted
//   with its generation at first access (0 = did not exist), and a directory
//   listing notes the node's child-set generation. Commit fails with EAGAIN,
//   applying nothing, when any noted generation changed. Unlike C xenstored,
//   creating a child does not count as rewriting the parent's record: two
//   transactions adding different children to one parent (1000 devices
//   connecting at once under /local/domain/0/backend/vbd) both commit; only a
//   transaction that listed the parent conflicts.
// - Watches fire on the path and everything below it; rm also fires the
//   watches set exactly on each removed descendant (post-order, as
//   xenstored's tree walk). A watch fires once when set. Changes made in a
//   transaction fire at commit. A watcher is told only if it may read the
//   node or its parent (or could read it before a set_perms). An event equal
//   to one still queued for the same connection is dropped (xenstored does
//   the same), except for the special "@..." events.
//
// Thread ownership: none. XsStore is not thread-safe; SimXenstored owns it
// behind a mutex. It touches no guest memory.
#pragma once

// <xen/io/xs_wire.h> needs uint32_t, and errno values for its xsd_errors table.
#include <cerrno>
#include <cstdint>
// clang-format off
#include <xen/io/xs_wire.h>
// clang-format on

#include <cstddef>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/result.h"
#include "common/xen/types.h"
#include "common/xen/xenstore.h"

namespace xenpath::sim {

// Per-connection operation counts (what the tests assert on: how many
// xenstore round trips a daemon needs, how often transactions conflict).
struct XsOpStats {
  uint64_t ops = 0;                      // every request, failed ones too
  uint64_t by_type[XS_TYPE_COUNT] = {};  // indexed by enum xsd_sockmsg_type
  uint64_t transactions = 0;             // transactions started
  uint64_t conflicts = 0;                // commits refused with EAGAIN
  uint64_t watch_events = 0;             // watch events queued to the connection

  XsOpStats& operator+=(const XsOpStats& o) noexcept;
};

using XsConnId = uint32_t;

enum class XsConnKind : uint8_t {
  kSocket,     // a unix-socket client (a daemon, xenstore-utils): privileged dom0
  kInProcess,  // a simulated guest or toolstack acting as a domain
};

// Quotas, as xenstored's defaults (quota_* in xenstored_core.c). They bound
// what an unprivileged (guest) connection can make the store hold.
inline constexpr size_t kXsMaxTransactionsPerConn = 10;  // quota_max_transaction -> ENOSPC
inline constexpr size_t kXsMaxWatchesPerConn = 128;      // quota_nb_watch_per_domain -> E2BIG
inline constexpr size_t kXsMaxPermsPerNode = 5;          // quota_nb_perms_per_node -> ENOSPC
inline constexpr size_t kXsMaxNodesPerDomain = 1000;     // quota_nb_entry_per_domain -> ENOSPC
inline constexpr size_t kXsMaxEntrySize = 2048;          // quota_max_entry_size -> ENOSPC
// xenstored gives privileged connections unlimited transactions; a client
// that leaks them would grow the simulator without bound, so cap it far
// above anything a correct daemon holds open.
inline constexpr size_t kXsMaxTransactionsPrivileged = 4096;
// Events queued for a connection that is not reading them. Beyond this the
// connection is broken (its owner stopped draining watch_fd); further events
// are dropped and counted rather than growing memory without bound.
inline constexpr size_t kXsMaxQueuedEvents = 65536;

inline constexpr DomId kDomidSelf = 0x7FF0;  // DOMID_SELF

class XsStore {
 public:
  // Called whenever a connection's event queue goes from empty to non-empty.
  using EventNotify = std::function<void(XsConnId)>;

  XsStore();
  XsStore(const XsStore&) = delete;
  XsStore& operator=(const XsStore&) = delete;

  void set_event_notify(EventNotify fn) noexcept { notify_ = std::move(fn); }

  // Connections. dom0 connections are privileged. Removing one drops its
  // watches, transactions and queued events; its counters stay in the totals.
  XsConnId add_connection(DomId domid, XsConnKind kind) noexcept;
  void remove_connection(XsConnId conn) noexcept;
  [[nodiscard]] bool has_connection(XsConnId conn) const noexcept;
  [[nodiscard]] bool has_transaction(XsConnId conn, XsTxn txn) const noexcept;

  // Node operations (the XenStore interface, acting as `conn`).
  Result<std::string> read(XsConnId conn, XsTxn txn, std::string_view path) noexcept;
  Status write(XsConnId conn, XsTxn txn, std::string_view path, std::string_view value) noexcept;
  Status mkdir(XsConnId conn, XsTxn txn, std::string_view path) noexcept;
  Status rm(XsConnId conn, XsTxn txn, std::string_view path) noexcept;
  Result<std::vector<std::string>> directory(XsConnId conn, XsTxn txn, std::string_view path) noexcept;
  // XS_DIRECTORY_PART reply payload: "<generation>\0" then the child names
  // from byte `offset` of the nul-separated list, as many as fit, and one
  // more "\0" once the list is complete.
  Result<std::string> directory_part(XsConnId conn, XsTxn txn, std::string_view path, uint32_t offset) noexcept;
  Result<std::vector<XsPerm>> get_perms(XsConnId conn, XsTxn txn, std::string_view path) noexcept;
  Status set_perms(XsConnId conn, XsTxn txn, std::string_view path, std::span<const XsPerm> perms) noexcept;

  Status watch(XsConnId conn, std::string_view path, std::string_view token) noexcept;
  Status unwatch(XsConnId conn, std::string_view path, std::string_view token) noexcept;
  // XS_RESET_WATCHES: drops the connection's watches and transactions.
  void reset_watches(XsConnId conn) noexcept;

  Result<XsTxn> transaction_start(XsConnId conn) noexcept;
  Status transaction_end(XsConnId conn, XsTxn txn, bool commit) noexcept;

  // XS_GET_DOMAIN_PATH.
  std::string get_domain_path(XsConnId conn, DomId domid) noexcept;

  // Domain management as the wire requests (privileged callers only, EACCES
  // otherwise). Counted as ops of `conn`.
  Status introduce(XsConnId conn, DomId domid) noexcept;
  Status release(XsConnId conn, DomId domid) noexcept;
  Result<bool> is_introduced(XsConnId conn, DomId domid) noexcept;
  Status resume(XsConnId conn, DomId domid) noexcept;
  Status set_target(XsConnId conn, DomId domid, DomId target) noexcept;

  // The same, from the host itself (the toolstack's hypervisor side).
  // introduce fires @introduceDomain the first time; release fires
  // @releaseDomain, forgets the domain and hands nodes it owned to dom0 and
  // drops its other permission entries, so a later domain reusing the id
  // inherits nothing (xenstored does the same lazily).
  bool introduce_domain(DomId domid) noexcept;
  bool release_domain(DomId domid) noexcept;
  [[nodiscard]] bool domain_introduced(DomId domid) const noexcept;

  // Counts a request that no other method counted (XS_CONTROL, unknown types).
  void count_op(XsConnId conn, uint32_t type) noexcept;

  // Moves up to `max` queued events of `conn` into `out`; returns how many.
  size_t pop_events(XsConnId conn, std::vector<XsWatchEvent>& out, size_t max) noexcept;
  [[nodiscard]] size_t queued_events(XsConnId conn) const noexcept;
  [[nodiscard]] uint64_t dropped_events(XsConnId conn) const noexcept;

  // Statistics.
  [[nodiscard]] XsOpStats conn_stats(XsConnId conn) const noexcept;
  [[nodiscard]] XsOpStats socket_stats() const noexcept;
  [[nodiscard]] XsOpStats domain_stats(DomId domid) const noexcept;
  void reset_stats() noexcept;

  [[nodiscard]] size_t watch_count() const noexcept;
  [[nodiscard]] size_t node_count() const noexcept { return nodes_.size(); }
  [[nodiscard]] size_t open_transactions() const noexcept;
  // Nodes owned by `domid` (what the per-domain node quota counts).
  [[nodiscard]] size_t nodes_owned(DomId domid) const noexcept;

  // Internal consistency (parent/child links, owner counts): "" when sound,
  // otherwise a description of the first problem. XS_CONTROL "check".
  [[nodiscard]] std::string check() const;

  // Path validation as xenstored's is_valid_nodename() (absolute paths only).
  static bool valid_path(std::string_view path) noexcept;

 private:
  struct NodeData {
    std::string value;
    std::vector<XsPerm> perms;
  };
  struct Node {
    NodeData data;
    uint64_t gen = 0;        // bumped when value or perms change
    uint64_t child_gen = 0;  // bumped when the set of children changes
    std::set<std::string, std::less<>> children;
  };
  struct ReadRecord {
    uint64_t gen = 0;                          // 0: did not exist
    std::optional<std::vector<XsPerm>> perms;  // perms at first access
  };
  struct PendingFire {
    std::string path;
    bool exact = false;
  };
  struct Txn {
    std::map<std::string, ReadRecord, std::less<>> reads;
    std::map<std::string, uint64_t, std::less<>> dir_reads;
    std::map<std::string, std::optional<NodeData>, std::less<>> overlay;  // nullopt: removed
    std::map<std::string, uint64_t, std::less<>> local_child_gen;
    std::map<DomId, int64_t> owned_delta;
    std::vector<PendingFire> fires;
    std::map<std::string, size_t, std::less<>> fire_index;
  };
  struct Watch {
    std::string path;  // canonical (absolute or "@...")
    std::string token;
    bool relative = false;
  };
  struct Conn {
    DomId domid = 0;
    XsConnKind kind = XsConnKind::kInProcess;
    bool privileged = false;
    std::vector<Watch> watches;
    std::map<XsTxn, std::unique_ptr<Txn>> txns;
    XsTxn next_txn = 1;
    std::deque<XsWatchEvent> events;
    std::unordered_set<std::string> event_keys;  // path\0token of queued events
    uint64_t dropped_events = 0;
    XsOpStats stats;
  };

  static constexpr unsigned kPermRead = 1;   // XS_PERM_READ
  static constexpr unsigned kPermWrite = 2;  // XS_PERM_WRITE
  static constexpr unsigned kPermOwner = 8;  // XS_PERM_OWNER

  Conn* conn_for(XsConnId id, uint32_t type) noexcept;
  Result<Txn*> txn_for(Conn& c, XsTxn txn) noexcept;
  Result<std::string> canonical(const Conn& c, std::string_view path) const;
  // What an operation on one path starts with, in xenstored's order: the
  // connection (EBADF if unknown; its `type` counted), the transaction, the
  // canonical path.
  struct PathOp {
    Conn* c;
    Txn* t;
    std::string path;
  };
  Result<PathOp> path_op(XsConnId conn, uint32_t type, XsTxn txn, std::string_view path) noexcept;
  static std::string implicit_path(DomId domid);
  static std::string parent_of(std::string_view path);
  static std::string child_path(std::string_view parent, std::string_view name);
  static bool is_child(std::string_view child, std::string_view parent) noexcept;

  unsigned perm_for(const Conn& c, const std::vector<XsPerm>& perms) const noexcept;
  void note_read(Txn& t, std::string_view path);
  const NodeData* lookup(Txn* t, std::string_view path);
  std::vector<std::string> children_of(Txn* t, std::string_view path, bool note);
  uint64_t child_generation(Txn* t, std::string_view path) const;
  Result<const NodeData*> get_node(const Conn& c, Txn* t, const std::string& path, unsigned need);

  Status create_node(Conn& c, Txn* t, const std::string& path, std::string_view value);
  size_t owned_in_view(const Txn* t, DomId domid) const noexcept;

  // Global (committed) store mutations; keep owner counts and generations.
  void global_put(const std::string& path, NodeData data);
  void global_erase(const std::string& path);

  void fire(Txn* t, const std::string& path, bool exact, const std::vector<XsPerm>* node_perms,
            const std::vector<XsPerm>* old_perms);
  // A node written or created at `path` (in `t`'s view): its watches fire
  // under the node's permissions now.
  void fire_written(Txn* t, const std::string& path);
  void fire_now(const std::string& path, bool exact, const std::vector<XsPerm>* node_perms,
                const std::vector<XsPerm>* old_perms);
  bool watch_permitted(const Conn& c, const std::string& path, const std::vector<XsPerm>* node_perms,
                       const std::vector<XsPerm>* old_perms) const;
  void queue_event(XsConnId id, Conn& c, std::string path, const std::string& token);
  static std::string watch_event_path(const Conn& c, const Watch& w, const std::string& path);

  Status commit(Conn& c, Txn& t);
  void drop_connection_state(Conn& c) noexcept;

  std::map<std::string, Node, std::less<>> nodes_;
  uint64_t generation_ = 0;
  std::unordered_map<DomId, size_t> owned_;
  std::map<std::string, std::vector<XsPerm>, std::less<>> special_perms_;
  std::set<DomId> introduced_;
  std::map<DomId, DomId> targets_;
  std::map<XsConnId, Conn> conns_;
  XsConnId next_conn_ = 1;
  XsOpStats retired_socket_;
  std::map<DomId, XsOpStats> retired_domain_;
  EventNotify notify_;
};

}  // namespace xenpath::sim
