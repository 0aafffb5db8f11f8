#include "sim/xs_store.h"

#include <algorithm>
#include <cerrno>
#include <utility>

namespace xenpath::sim {

XsOpStats& XsOpStats::operator+=(const XsOpStats& o) noexcept {
  ops += o.ops;
  for (size_t i = 0; i < XS_TYPE_COUNT; ++i) by_type[i] += o.by_type[i];
  transactions += o.transactions;
  conflicts += o.conflicts;
  watch_events += o.watch_events;
  return *this;
}

namespace {

bool valid_char(char ch) noexcept {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '/' ||
         ch == '_' || ch == '@';
}

std::string_view basename_of(std::string_view path) noexcept { return path.substr(path.rfind('/') + 1); }

}  // namespace

XsStore::XsStore() {
  // The initial tree of xenstored's setup_structure(): dom0's, no access for
  // anybody else.
  const std::vector<XsPerm> dom0_only{{kDom0, XsPerm::kNone}};
  Node root;
  root.data.perms = dom0_only;
  root.gen = ++generation_;
  root.child_gen = root.gen;
  nodes_.emplace("/", std::move(root));
  ++owned_[kDom0];
  global_put("/tool", NodeData{{}, dom0_only});
  global_put("/tool/xenstored", NodeData{{}, dom0_only});
  special_perms_["@releaseDomain"] = dom0_only;
  special_perms_["@introduceDomain"] = dom0_only;
  introduced_.insert(kDom0);
}

// ---------------------------------------------------------------- paths

bool XsStore::valid_path(std::string_view p) noexcept {
  if (p.empty() || p[0] != '/') return false;
  if (p.size() > 1 && p.back() == '/') return false;
  if (p.find("//") != std::string_view::npos) return false;
  // Like xenstored's sscanf("/local/domain/%5u/%n"): a domain's own subtree
  // gets the relative-path budget on top of its prefix.
  size_t local_off = 0;
  constexpr std::string_view kLocal = "/local/domain/";
  if (p.substr(0, kLocal.size()) == kLocal) {
    size_t i = kLocal.size();
    size_t digits = 0;
    while (i < p.size() && digits < 5 && p[i] >= '0' && p[i] <= '9') {
      ++i;
      ++digits;
    }
    if (digits > 0 && i < p.size() && p[i] == '/') local_off = i + 1;
  }
  if (p.size() > local_off + XENSTORE_REL_PATH_MAX) return false;
  if (p.size() > XENSTORE_ABS_PATH_MAX) return false;
  return std::all_of(p.begin(), p.end(), valid_char);
}

std::string XsStore::implicit_path(DomId domid) { return "/local/domain/" + std::to_string(domid); }

std::string XsStore::parent_of(std::string_view path) {
  size_t slash = path.rfind('/');
  if (slash == 0 || slash == std::string_view::npos) return "/";
  return std::string(path.substr(0, slash));
}

std::string XsStore::child_path(std::string_view parent, std::string_view name) {
  std::string out(parent);
  if (out != "/") out.push_back('/');
  out.append(name);
  return out;
}

bool XsStore::is_child(std::string_view child, std::string_view parent) noexcept {
  if (parent == "/") return true;
  if (child.substr(0, parent.size()) != parent) return false;
  return child.size() == parent.size() || child[parent.size()] == '/';
}

Result<std::string> XsStore::canonical(const Conn& c, std::string_view path) const {
  // "@..." names are only meaningful to watches and set_perms.
  if (path.empty() || path[0] == '@') return unexpected(EINVAL);
  std::string p = path[0] == '/' ? std::string(path) : implicit_path(c.domid) + "/" + std::string(path);
  if (!valid_path(p)) return unexpected(EINVAL);
  return p;
}

// ---------------------------------------------------------------- connections

XsConnId XsStore::add_connection(DomId domid, XsConnKind kind) noexcept {
  XsConnId id = next_conn_++;
  while (id == 0 || conns_.count(id) != 0) id = next_conn_++;
  Conn& c = conns_[id];
  c.domid = domid;
  c.kind = kind;
  c.privileged = domid == kDom0;
  return id;
}

void XsStore::remove_connection(XsConnId id) noexcept {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  Conn& c = it->second;
  if (c.kind == XsConnKind::kSocket) retired_socket_ += c.stats;
  else retired_domain_[c.domid] += c.stats;
  conns_.erase(it);
}

bool XsStore::has_connection(XsConnId id) const noexcept { return conns_.count(id) != 0; }

bool XsStore::has_transaction(XsConnId id, XsTxn txn) const noexcept {
  auto it = conns_.find(id);
  return it != conns_.end() && it->second.txns.count(txn) != 0;
}

XsStore::Conn* XsStore::conn_for(XsConnId id, uint32_t type) noexcept {
  auto it = conns_.find(id);
  if (it == conns_.end()) return nullptr;
  Conn& c = it->second;
  ++c.stats.ops;
  if (type < XS_TYPE_COUNT) ++c.stats.by_type[type];
  return &c;
}

void XsStore::count_op(XsConnId id, uint32_t type) noexcept { (void)conn_for(id, type); }

Result<XsStore::PathOp> XsStore::path_op(XsConnId conn, uint32_t type, XsTxn txn, std::string_view path) noexcept {
  Conn* c = conn_for(conn, type);
  if (c == nullptr) return unexpected(EBADF);
  XP_ASSIGN_OR_RETURN(Txn * t, txn_for(*c, txn));
  XP_ASSIGN_OR_RETURN(std::string p, canonical(*c, path));
  return PathOp{c, t, std::move(p)};
}

Result<XsStore::Txn*> XsStore::txn_for(Conn& c, XsTxn txn) noexcept {
  if (txn == kXsNoTxn) return static_cast<Txn*>(nullptr);
  auto it = c.txns.find(txn);
  if (it == c.txns.end()) return unexpected(ENOENT);
  return it->second.get();
}

// ---------------------------------------------------------------- views

unsigned XsStore::perm_for(const Conn& c, const std::vector<XsPerm>& perms) const noexcept {
  constexpr unsigned kAll = kPermRead | kPermWrite | kPermOwner;
  if (c.privileged) return kAll;
  if (perms.empty()) return 0;
  auto tgt = targets_.find(c.domid);
  auto is_me = [&](DomId d) { return d == c.domid || (tgt != targets_.end() && d == tgt->second); };
  if (is_me(perms[0].domid)) return kAll;
  for (size_t i = 1; i < perms.size(); ++i)
    if (is_me(perms[i].domid)) return perms[i].access & (kPermRead | kPermWrite);
  return perms[0].access & (kPermRead | kPermWrite);
}

void XsStore::note_read(Txn& t, std::string_view path) {
  if (t.reads.find(path) != t.reads.end()) return;
  ReadRecord rec;
  auto g = nodes_.find(path);
  if (g != nodes_.end()) {
    rec.gen = g->second.gen;
    rec.perms = g->second.data.perms;
  }
  t.reads.emplace(std::string(path), std::move(rec));
}

const XsStore::NodeData* XsStore::lookup(Txn* t, std::string_view path) {
  if (t != nullptr) {
    auto o = t->overlay.find(path);
    if (o != t->overlay.end()) return o->second ? &*o->second : nullptr;
    note_read(*t, path);
  }
  auto g = nodes_.find(path);
  return g == nodes_.end() ? nullptr : &g->second.data;
}

std::vector<std::string> XsStore::children_of(Txn* t, std::string_view path, bool note) {
  auto g = nodes_.find(path);
  if (t == nullptr) {
    if (g == nodes_.end()) return {};
    return {g->second.children.begin(), g->second.children.end()};
  }
  if (note && t->dir_reads.find(path) == t->dir_reads.end())
    t->dir_reads.emplace(std::string(path), g == nodes_.end() ? 0 : g->second.child_gen);
  std::set<std::string, std::less<>> names;
  if (g != nodes_.end()) {
    for (const auto& name : g->second.children) {
      auto o = t->overlay.find(child_path(path, name));
      if (o == t->overlay.end() || o->second) names.insert(name);
    }
  }
  // Children this transaction created or removed.
  std::string prefix(path);
  if (prefix != "/") prefix.push_back('/');
  for (auto it = t->overlay.lower_bound(prefix);
       it != t->overlay.end() && it->first.compare(0, prefix.size(), prefix) == 0; ++it) {
    std::string_view rest = std::string_view(it->first).substr(prefix.size());
    if (rest.empty() || rest.find('/') != std::string_view::npos) continue;
    if (it->second) names.emplace(rest);
    else names.erase(std::string(rest));
  }
  return {names.begin(), names.end()};
}

uint64_t XsStore::child_generation(Txn* t, std::string_view path) const {
  if (t != nullptr) {
    auto l = t->local_child_gen.find(path);
    if (l != t->local_child_gen.end()) return l->second;
  }
  auto g = nodes_.find(path);
  return g == nodes_.end() ? 0 : g->second.child_gen;
}

// xenstored's get_node() + errno_from_parents(): a refusal or a missing node
// is reported as ENOENT only when the nearest existing ancestor would grant
// the same access; otherwise EACCES, revealing nothing.
Result<const XsStore::NodeData*> XsStore::get_node(const Conn& c, Txn* t, const std::string& path, unsigned need) {
  const NodeData* n = lookup(t, path);
  int err = ENOENT;
  if (n != nullptr) {
    if ((perm_for(c, n->perms) & need) == need) return n;
    err = EACCES;
  }
  unsigned parent_perm = 0;
  std::string cur = path;
  while (cur != "/") {
    cur = parent_of(cur);
    if (const NodeData* a = lookup(t, cur)) {
      parent_perm = perm_for(c, a->perms);
      break;
    }
  }
  return unexpected((parent_perm & need) != 0 ? err : EACCES);
}

size_t XsStore::owned_in_view(const Txn* t, DomId domid) const noexcept {
  int64_t n = 0;
  if (auto it = owned_.find(domid); it != owned_.end()) n = static_cast<int64_t>(it->second);
  if (t != nullptr) {
    if (auto d = t->owned_delta.find(domid); d != t->owned_delta.end()) n += d->second;
  }
  return n < 0 ? 0 : static_cast<size_t>(n);
}

// ---------------------------------------------------------------- global mutations

void XsStore::global_put(const std::string& path, NodeData data) {
  auto owned_dec = [this](DomId d) {
    auto it = owned_.find(d);
    if (it != owned_.end() && --it->second == 0) owned_.erase(it);
  };
  auto it = nodes_.find(path);
  if (it != nodes_.end()) {
    DomId old_owner = it->second.data.perms.empty() ? kDom0 : it->second.data.perms[0].domid;
    DomId new_owner = data.perms.empty() ? kDom0 : data.perms[0].domid;
    if (old_owner != new_owner) {
      owned_dec(old_owner);
      ++owned_[new_owner];
    }
    it->second.data = std::move(data);
    it->second.gen = ++generation_;
    return;
  }
  auto parent = nodes_.find(parent_of(path));
  if (parent == nodes_.end()) return;  // callers create top-down; never reached
  parent->second.children.emplace(basename_of(path));
  parent->second.child_gen = ++generation_;
  Node n;
  ++owned_[data.perms.empty() ? kDom0 : data.perms[0].domid];
  n.data = std::move(data);
  n.gen = ++generation_;
  n.child_gen = n.gen;
  nodes_.emplace(path, std::move(n));
}

void XsStore::global_erase(const std::string& path) {
  auto it = nodes_.find(path);
  if (it == nodes_.end() || path == "/") return;
  auto owned_dec = [this](const Node& n) {
    DomId d = n.data.perms.empty() ? kDom0 : n.data.perms[0].domid;
    auto o = owned_.find(d);
    if (o != owned_.end() && --o->second == 0) owned_.erase(o);
  };
  // Every descendant of "/a" sorts in one run starting with "/a/".
  const std::string prefix = path + "/";
  auto first = nodes_.lower_bound(prefix);
  auto last = first;
  while (last != nodes_.end() && last->first.compare(0, prefix.size(), prefix) == 0) {
    owned_dec(last->second);
    ++last;
  }
  nodes_.erase(first, last);
  owned_dec(it->second);
  nodes_.erase(it);
  auto parent = nodes_.find(parent_of(path));
  if (parent != nodes_.end()) {
    auto child = parent->second.children.find(basename_of(path));
    if (child != parent->second.children.end()) parent->second.children.erase(child);
    parent->second.child_gen = ++generation_;
  }
}

// ---------------------------------------------------------------- node operations

Result<std::string> XsStore::read(XsConnId conn, XsTxn txn, std::string_view path) noexcept {
  XP_ASSIGN_OR_RETURN(PathOp op, path_op(conn, XS_READ, txn, path));
  auto& [c, t, p] = op;
  XP_ASSIGN_OR_RETURN(const NodeData* n, get_node(*c, t, p, kPermRead));
  return n->value;
}

Status XsStore::create_node(Conn& c, Txn* t, const std::string& path, std::string_view value) {
  // Walk up to the nearest existing ancestor; everything between is created,
  // inheriting its permissions (xenstored's construct_node()).
  std::vector<std::string> missing{path};
  const NodeData* anc = nullptr;
  std::string cur = path;
  for (;;) {
    cur = parent_of(cur);
    anc = lookup(t, cur);
    if (anc != nullptr) break;
    if (cur == "/") return unexpected(EIO);  // no root: cannot happen
    missing.push_back(cur);
  }
  std::vector<XsPerm> perms = anc->perms;
  if (perms.empty()) perms.push_back({kDom0, XsPerm::kNone});
  if (!c.privileged) {
    perms[0].domid = c.domid;  // unprivileged domains own what they create
    if (owned_in_view(t, c.domid) + missing.size() > kXsMaxNodesPerDomain) return unexpected(ENOSPC);
    if (value.size() + perms.size() * 8 >= kXsMaxEntrySize) return unexpected(ENOSPC);
  }
  for (size_t i = missing.size(); i-- > 0;) {
    NodeData d{i == 0 ? std::string(value) : std::string(), perms};
    if (t == nullptr) {
      global_put(missing[i], std::move(d));
    } else {
      t->overlay[missing[i]] = std::move(d);
      t->local_child_gen[parent_of(missing[i])] = ++generation_;
      t->owned_delta[perms[0].domid] += 1;
    }
  }
  return ok();
}

Status XsStore::write(XsConnId conn, XsTxn txn, std::string_view path, std::string_view value) noexcept {
  Conn* c = conn_for(conn, XS_WRITE);
  if (c == nullptr) return unexpected(EBADF);
  XP_ASSIGN_OR_RETURN(Txn * t, txn_for(*c, txn));
  if (value.size() > XENSTORE_PAYLOAD_MAX) return unexpected(E2BIG);
  XP_ASSIGN_OR_RETURN(std::string p, canonical(*c, path));
  auto n = get_node(*c, t, p, kPermWrite);
  if (!n) {
    if (n.error() != ENOENT) return unexpected(n.error());
    XP_TRY(create_node(*c, t, p, value));
  } else {
    const NodeData* old = *n;
    if (!c->privileged && value.size() + old->perms.size() * 8 >= kXsMaxEntrySize) return unexpected(ENOSPC);
    NodeData d{std::string(value), old->perms};
    if (t != nullptr) t->overlay[p] = std::move(d);
    else global_put(p, std::move(d));
  }
  fire_written(t, p);
  return ok();
}

Status XsStore::mkdir(XsConnId conn, XsTxn txn, std::string_view path) noexcept {
  XP_ASSIGN_OR_RETURN(PathOp op, path_op(conn, XS_MKDIR, txn, path));
  auto& [c, t, p] = op;
  auto n = get_node(*c, t, p, kPermWrite);
  if (n) return ok();  // already there: fine, and nothing changed
  if (n.error() != ENOENT) return unexpected(n.error());
  XP_TRY(create_node(*c, t, p, {}));
  fire_written(t, p);
  return ok();
}

Status XsStore::rm(XsConnId conn, XsTxn txn, std::string_view path) noexcept {
  XP_ASSIGN_OR_RETURN(PathOp op, path_op(conn, XS_RM, txn, path));
  auto& [c, t, p] = op;
  auto n = get_node(*c, t, p, kPermWrite);
  if (!n) {
    // Already gone: fine if the parent exists (xenstored's do_rm()).
    if (n.error() == ENOENT && lookup(t, parent_of(p)) != nullptr) return ok();
    return unexpected(n.error());
  }
  if (p == "/") return unexpected(EINVAL);

  // The subtree in post-order (children before their parent), as
  // xenstored's walk fires its watches.
  struct Item {
    std::string path;
    std::vector<XsPerm> perms;
  };
  std::vector<Item> items;
  std::vector<std::pair<std::string, bool>> stack{{p, false}};
  while (!stack.empty()) {
    auto [cur, expanded] = std::move(stack.back());
    stack.pop_back();
    const NodeData* d = lookup(t, cur);
    if (d == nullptr) continue;
    if (expanded) {
      items.push_back({cur, d->perms});
      continue;
    }
    stack.emplace_back(cur, true);
    for (auto& name : children_of(t, cur, true)) stack.emplace_back(child_path(cur, name), false);
  }
  for (const auto& item : items) fire(t, item.path, item.path != p, &item.perms, nullptr);
  if (t == nullptr) {
    global_erase(p);
  } else {
    for (const auto& item : items) {
      t->overlay[item.path] = std::nullopt;
      t->owned_delta[item.perms.empty() ? kDom0 : item.perms[0].domid] -= 1;
    }
    t->local_child_gen[parent_of(p)] = ++generation_;
  }
  return ok();
}

Result<std::vector<std::string>> XsStore::directory(XsConnId conn, XsTxn txn, std::string_view path) noexcept {
  XP_ASSIGN_OR_RETURN(PathOp op, path_op(conn, XS_DIRECTORY, txn, path));
  auto& [c, t, p] = op;
  XP_TRY(get_node(*c, t, p, kPermRead));
  return children_of(t, p, true);
}

Result<std::string> XsStore::directory_part(XsConnId conn, XsTxn txn, std::string_view path, uint32_t offset) noexcept {
  XP_ASSIGN_OR_RETURN(PathOp op, path_op(conn, XS_DIRECTORY_PART, txn, path));
  auto& [c, t, p] = op;
  XP_TRY(get_node(*c, t, p, kPermRead));
  std::string list;
  for (const auto& name : children_of(t, p, true)) {
    list.append(name);
    list.push_back('\0');
  }
  // The generation changes whenever the child set does, so a client
  // assembling the list in parts restarts when it changed underneath.
  std::string out = std::to_string(child_generation(t, p));
  out.push_back('\0');
  if (offset >= list.size()) {
    out.push_back('\0');
    return out;
  }
  const size_t max_len = XENSTORE_PAYLOAD_MAX - out.size() - 1;
  size_t len = 0;
  while (offset + len < list.size()) {
    size_t name_len = list.find('\0', offset + len) - (offset + len);
    if (len + name_len >= max_len) break;
    len += name_len + 1;
  }
  out.append(list, offset, len);
  if (offset + len == list.size()) out.push_back('\0');
  return out;
}

Result<std::vector<XsPerm>> XsStore::get_perms(XsConnId conn, XsTxn txn, std::string_view path) noexcept {
  XP_ASSIGN_OR_RETURN(PathOp op, path_op(conn, XS_GET_PERMS, txn, path));
  auto& [c, t, p] = op;
  XP_ASSIGN_OR_RETURN(const NodeData* n, get_node(*c, t, p, kPermRead));
  return n->perms;
}

Status XsStore::set_perms(XsConnId conn, XsTxn txn, std::string_view path, std::span<const XsPerm> perms) noexcept {
  Conn* c = conn_for(conn, XS_SET_PERMS);
  if (c == nullptr) return unexpected(EBADF);
  XP_ASSIGN_OR_RETURN(Txn * t, txn_for(*c, txn));
  if (perms.empty()) return unexpected(EINVAL);
  for (const auto& perm : perms)
    if (perm.access > XsPerm::kBoth) return unexpected(EINVAL);
  if (!c->privileged && perms.size() > kXsMaxPermsPerNode) return unexpected(ENOSPC);
  std::vector<XsPerm> want(perms.begin(), perms.end());

  if (!path.empty() && path[0] == '@') {
    auto sp = special_perms_.find(path);
    if (sp == special_perms_.end()) return unexpected(EINVAL);
    if ((perm_for(*c, sp->second) & (kPermWrite | kPermOwner)) != (kPermWrite | kPermOwner)) return unexpected(EACCES);
    sp->second = std::move(want);
    return ok();
  }

  XP_ASSIGN_OR_RETURN(std::string p, canonical(*c, path));
  XP_ASSIGN_OR_RETURN(const NodeData* n, get_node(*c, t, p, kPermWrite | kPermOwner));
  // Unprivileged domains may not give their nodes away.
  if (!c->privileged && want[0].domid != n->perms[0].domid) return unexpected(EPERM);
  std::vector<XsPerm> old = n->perms;
  NodeData d{n->value, want};
  if (t != nullptr) {
    if (old[0].domid != want[0].domid) {
      t->owned_delta[old[0].domid] -= 1;
      t->owned_delta[want[0].domid] += 1;
    }
    t->overlay[p] = std::move(d);
  } else {
    global_put(p, std::move(d));
  }
  fire(t, p, false, &want, &old);
  return ok();
}

// ---------------------------------------------------------------- transactions

Result<XsTxn> XsStore::transaction_start(XsConnId conn) noexcept {
  Conn* c = conn_for(conn, XS_TRANSACTION_START);
  if (c == nullptr) return unexpected(EBADF);
  const size_t limit = c->privileged ? kXsMaxTransactionsPrivileged : kXsMaxTransactionsPerConn;
  if (c->txns.size() >= limit) return unexpected(ENOSPC);
  // 0 means "no transaction" on the wire; skip it and ids still in use.
  XsTxn id = c->next_txn++;
  while (id == kXsNoTxn || c->txns.count(id) != 0) id = c->next_txn++;
  c->txns.emplace(id, std::make_unique<Txn>());
  ++c->stats.transactions;
  return id;
}

Status XsStore::transaction_end(XsConnId conn, XsTxn txn, bool commit_it) noexcept {
  Conn* c = conn_for(conn, XS_TRANSACTION_END);
  if (c == nullptr) return unexpected(EBADF);
  auto it = c->txns.find(txn);
  if (txn == kXsNoTxn || it == c->txns.end()) return unexpected(ENOENT);
  std::unique_ptr<Txn> t = std::move(it->second);
  c->txns.erase(it);
  if (!commit_it) return ok();
  Status s = commit(*c, *t);
  if (!s && s.error() == EAGAIN) ++c->stats.conflicts;
  return s;
}

Status XsStore::commit(Conn& c, Txn& t) {
  for (const auto& [path, rec] : t.reads) {
    auto g = nodes_.find(path);
    if ((g == nodes_.end() ? 0 : g->second.gen) != rec.gen) return unexpected(EAGAIN);
  }
  for (const auto& [path, gen] : t.dir_reads) {
    auto g = nodes_.find(path);
    if ((g == nodes_.end() ? 0 : g->second.child_gen) != gen) return unexpected(EAGAIN);
  }
  if (!c.privileged) {
    auto d = t.owned_delta.find(c.domid);
    if (d != t.owned_delta.end() && d->second > 0 && owned_in_view(&t, c.domid) > kXsMaxNodesPerDomain)
      return unexpected(ENOSPC);
  }
  // Parents sort before their descendants, so creation goes top-down and a
  // removed subtree's root goes first (taking the rest with it).
  for (auto& [path, data] : t.overlay) {
    if (data) {
      if (path != "/" && nodes_.find(parent_of(path)) == nodes_.end()) continue;
      global_put(path, std::move(*data));
    } else {
      global_erase(path);
    }
  }
  for (const auto& f : t.fires) {
    auto g = nodes_.find(f.path);
    auto r = t.reads.find(f.path);
    const std::vector<XsPerm>* old_perms = (r != t.reads.end() && r->second.perms) ? &*r->second.perms : nullptr;
    fire_now(f.path, f.exact, g != nodes_.end() ? &g->second.data.perms : nullptr, old_perms);
  }
  return ok();
}

// ---------------------------------------------------------------- domains

std::string XsStore::get_domain_path(XsConnId conn, DomId domid) noexcept {
  count_op(conn, XS_GET_DOMAIN_PATH);
  return implicit_path(domid);
}

bool XsStore::introduce_domain(DomId domid) noexcept {
  if (!introduced_.insert(domid).second) return false;
  if (domid != kDom0) fire_now("@introduceDomain", true, nullptr, nullptr);
  return true;
}

bool XsStore::release_domain(DomId domid) noexcept {
  if (domid == kDom0 || introduced_.erase(domid) == 0) return false;
  targets_.erase(domid);
  for (auto it = targets_.begin(); it != targets_.end();) it = it->second == domid ? targets_.erase(it) : std::next(it);
  auto scrub = [domid](std::vector<XsPerm>& perms) {
    bool changed = false;
    if (!perms.empty() && perms[0].domid == domid) {
      perms[0].domid = kDom0;
      changed = true;
    }
    auto tail = std::remove_if(perms.begin() + (perms.empty() ? 0 : 1), perms.end(),
                               [domid](const XsPerm& p) { return p.domid == domid; });
    changed |= tail != perms.end();
    perms.erase(tail, perms.end());
    return changed;
  };
  for (auto& [path, node] : nodes_) {
    DomId owner = node.data.perms.empty() ? kDom0 : node.data.perms[0].domid;
    if (scrub(node.data.perms) && owner == domid) {
      auto o = owned_.find(domid);
      if (o != owned_.end() && --o->second == 0) owned_.erase(o);
      ++owned_[kDom0];
    }
  }
  for (auto& [name, perms] : special_perms_) scrub(perms);
  fire_now("@releaseDomain", true, nullptr, nullptr);
  return true;
}

bool XsStore::domain_introduced(DomId domid) const noexcept { return introduced_.count(domid) != 0; }

Status XsStore::introduce(XsConnId conn, DomId domid) noexcept {
  Conn* c = conn_for(conn, XS_INTRODUCE);
  if (c == nullptr) return unexpected(EBADF);
  if (!c->privileged) return unexpected(EACCES);
  introduce_domain(domid);
  return ok();
}

Status XsStore::release(XsConnId conn, DomId domid) noexcept {
  Conn* c = conn_for(conn, XS_RELEASE);
  if (c == nullptr) return unexpected(EBADF);
  if (!c->privileged) return unexpected(EACCES);
  if (domid == kDom0) return unexpected(EINVAL);
  if (!release_domain(domid)) return unexpected(ENOENT);
  return ok();
}

Result<bool> XsStore::is_introduced(XsConnId conn, DomId domid) noexcept {
  Conn* c = conn_for(conn, XS_IS_DOMAIN_INTRODUCED);
  if (c == nullptr) return unexpected(EBADF);
  if (!c->privileged) return unexpected(EACCES);
  return domid == kDomidSelf || domain_introduced(domid);
}

Status XsStore::resume(XsConnId conn, DomId domid) noexcept {
  Conn* c = conn_for(conn, XS_RESUME);
  if (c == nullptr) return unexpected(EBADF);
  if (!c->privileged) return unexpected(EACCES);
  if (domid == kDom0) return unexpected(EINVAL);
  if (!domain_introduced(domid)) return unexpected(ENOENT);
  return ok();
}

Status XsStore::set_target(XsConnId conn, DomId domid, DomId target) noexcept {
  Conn* c = conn_for(conn, XS_SET_TARGET);
  if (c == nullptr) return unexpected(EBADF);
  if (!c->privileged) return unexpected(EACCES);
  if (!domain_introduced(domid) || !domain_introduced(target)) return unexpected(ENOENT);
  targets_[domid] = target;
  return ok();
}

// ---------------------------------------------------------------- statistics

XsOpStats XsStore::conn_stats(XsConnId conn) const noexcept {
  auto it = conns_.find(conn);
  return it == conns_.end() ? XsOpStats{} : it->second.stats;
}

XsOpStats XsStore::socket_stats() const noexcept {
  XsOpStats sum = retired_socket_;
  for (const auto& [id, c] : conns_)
    if (c.kind == XsConnKind::kSocket) sum += c.stats;
  return sum;
}

XsOpStats XsStore::domain_stats(DomId domid) const noexcept {
  XsOpStats sum;
  if (auto it = retired_domain_.find(domid); it != retired_domain_.end()) sum = it->second;
  for (const auto& [id, c] : conns_)
    if (c.kind == XsConnKind::kInProcess && c.domid == domid) sum += c.stats;
  return sum;
}

void XsStore::reset_stats() noexcept {
  retired_socket_ = {};
  retired_domain_.clear();
  for (auto& [id, c] : conns_) c.stats = {};
}

size_t XsStore::watch_count() const noexcept {
  size_t n = 0;
  for (const auto& [id, c] : conns_) n += c.watches.size();
  return n;
}

size_t XsStore::open_transactions() const noexcept {
  size_t n = 0;
  for (const auto& [id, c] : conns_) n += c.txns.size();
  return n;
}

size_t XsStore::nodes_owned(DomId domid) const noexcept { return owned_in_view(nullptr, domid); }

std::string XsStore::check() const {
  std::unordered_map<DomId, size_t> owners;
  for (const auto& [path, node] : nodes_) {
    if (node.data.perms.empty()) return "node without permissions: " + path;
    ++owners[node.data.perms[0].domid];
    if (path != "/") {
      auto parent = nodes_.find(parent_of(path));
      if (parent == nodes_.end()) return "orphan node: " + path;
      if (parent->second.children.count(basename_of(path)) == 0)
        return "node missing from its parent's children: " + path;
    }
    for (const auto& name : node.children)
      if (nodes_.count(child_path(path, name)) == 0) return "dangling child " + name + " of " + path;
  }
  if (owners != owned_) return "owner counts out of step";
  return {};
}

}  // namespace xenpath::sim
