// XsStore's watches (xs_store.h): registration, the events a change fires
// (xenstored's fire_watches(): the node, its parents for a recursive
// watch, permission-filtered, deduplicated per connection and bounded), and
// their delivery. The node operations and transactions are in xs_store.cc.
#include <algorithm>
#include <cerrno>
#include <utility>

#include "sim/xs_store.h"

namespace xenpath::sim {

// ---------------------------------------------------------------- watches

std::string XsStore::watch_event_path(const Conn& c, const Watch& w, const std::string& path) {
  if (!w.relative) return path;
  const std::string prefix = implicit_path(c.domid);
  if (path.compare(0, prefix.size(), prefix) != 0) return path;
  std::string rest = path.substr(prefix.size());
  if (!rest.empty() && rest[0] == '/') rest.erase(0, 1);
  return rest;
}

void XsStore::queue_event(XsConnId id, Conn& c, std::string path, const std::string& token) {
  // xenstored never sends an event that does not fit a message.
  if (path.size() + token.size() + 2 > XENSTORE_PAYLOAD_MAX) return;
  const bool special = !path.empty() && path[0] == '@';
  std::string key;
  if (!special) {
    key = path;
    key.push_back('\0');
    key.append(token);
    if (c.event_keys.count(key) != 0) return;  // the same event is still queued
  }
  if (c.events.size() >= kXsMaxQueuedEvents) {
    ++c.dropped_events;
    return;
  }
  const bool was_empty = c.events.empty();
  c.events.push_back(XsWatchEvent{std::move(path), token});
  if (!special) c.event_keys.insert(std::move(key));
  ++c.stats.watch_events;
  if (was_empty && notify_) notify_(id);
}

bool XsStore::watch_permitted(const Conn& c, const std::string& path, const std::vector<XsPerm>* node_perms,
                              const std::vector<XsPerm>* old_perms) const {
  // xenstored's watch_permitted(): the node or its parent must be readable;
  // a watcher that could read the node before a permission change is told
  // about the change that took its access away.
  if (old_perms != nullptr && (perm_for(c, *old_perms) & kPermRead) != 0) return true;
  if (node_perms == nullptr) return false;
  if ((perm_for(c, *node_perms) & kPermRead) != 0) return true;
  auto parent = nodes_.find(parent_of(path));
  return parent != nodes_.end() && (perm_for(c, parent->second.data.perms) & kPermRead) != 0;
}

void XsStore::fire_now(const std::string& path, bool exact, const std::vector<XsPerm>* node_perms,
                       const std::vector<XsPerm>* old_perms) {
  const bool special = !path.empty() && path[0] == '@';
  for (auto& [id, c] : conns_) {
    if (c.watches.empty()) continue;
    // Match first, permission check (node lookups) only for a connection
    // that has a matching watch: with hundreds of guest connections most
    // watch nothing near `path`, and the check is the expensive part.
    int permitted = -1;  // unknown until a watch matches
    for (const auto& w : c.watches) {
      const bool match = exact ? w.path == path : is_child(path, w.path);
      if (!match) continue;
      if (permitted < 0) {
        if (special) {
          auto sp = special_perms_.find(path);
          permitted = sp != special_perms_.end() && (perm_for(c, sp->second) & kPermRead) != 0;
        } else {
          permitted = watch_permitted(c, path, node_perms, old_perms);
        }
      }
      if (permitted == 0) break;
      queue_event(id, c, watch_event_path(c, w, path), w.token);
    }
  }
}

void XsStore::fire(Txn* t, const std::string& path, bool exact, const std::vector<XsPerm>* node_perms,
                   const std::vector<XsPerm>* old_perms) {
  if (t == nullptr) {
    fire_now(path, exact, node_perms, old_perms);
    return;
  }
  // In a transaction, remember the node; a non-exact event replaces an
  // exact one, never the other way round (xenstored's queue_watches()).
  auto it = t->fire_index.find(path);
  if (it == t->fire_index.end()) {
    t->fire_index.emplace(path, t->fires.size());
    t->fires.push_back({path, exact});
  } else if (!exact) {
    t->fires[it->second].exact = false;
  }
}

void XsStore::fire_written(Txn* t, const std::string& path) {
  const NodeData* now = lookup(t, path);
  fire(t, path, false, now != nullptr ? &now->perms : nullptr, nullptr);
}

Status XsStore::watch(XsConnId conn, std::string_view path, std::string_view token) noexcept {
  Conn* c = conn_for(conn, XS_WATCH);
  if (c == nullptr) return unexpected(EBADF);
  if (token.find('\0') != std::string_view::npos) return unexpected(EINVAL);
  Watch w;
  w.token = std::string(token);
  if (!path.empty() && path[0] == '@') {
    if (path.size() > XENSTORE_REL_PATH_MAX || path.find('\0') != std::string_view::npos) return unexpected(EINVAL);
    w.path = std::string(path);
  } else {
    w.relative = path.empty() || path[0] != '/';
    XP_ASSIGN_OR_RETURN(w.path, canonical(*c, path));
  }
  for (const auto& existing : c->watches)
    if (existing.path == w.path && existing.token == w.token) return unexpected(EEXIST);
  if (!c->privileged && c->watches.size() >= kXsMaxWatchesPerConn) return unexpected(E2BIG);
  c->watches.push_back(w);
  // Fired once up front, whatever the permissions: it only says "look now".
  queue_event(conn, *c, watch_event_path(*c, w, w.path), w.token);
  return ok();
}

Status XsStore::unwatch(XsConnId conn, std::string_view path, std::string_view token) noexcept {
  Conn* c = conn_for(conn, XS_UNWATCH);
  if (c == nullptr) return unexpected(EBADF);
  std::string p = (!path.empty() && (path[0] == '/' || path[0] == '@'))
                      ? std::string(path)
                      : implicit_path(c->domid) + "/" + std::string(path);
  auto it = std::find_if(c->watches.begin(), c->watches.end(),
                         [&](const Watch& w) { return w.path == p && w.token == token; });
  if (it == c->watches.end()) return unexpected(ENOENT);
  c->watches.erase(it);
  return ok();
}

void XsStore::reset_watches(XsConnId conn) noexcept {
  Conn* c = conn_for(conn, XS_RESET_WATCHES);
  if (c == nullptr) return;
  c->watches.clear();
  c->txns.clear();
}

size_t XsStore::pop_events(XsConnId conn, std::vector<XsWatchEvent>& out, size_t max) noexcept {
  auto it = conns_.find(conn);
  if (it == conns_.end()) return 0;
  Conn& c = it->second;
  size_t n = 0;
  while (n < max && !c.events.empty()) {
    XsWatchEvent& ev = c.events.front();
    if (ev.path.empty() || ev.path[0] != '@') {
      std::string key = ev.path;
      key.push_back('\0');
      key.append(ev.token);
      c.event_keys.erase(key);
    }
    out.push_back(std::move(ev));
    c.events.pop_front();
    ++n;
  }
  return n;
}

size_t XsStore::queued_events(XsConnId conn) const noexcept {
  auto it = conns_.find(conn);
  return it == conns_.end() ? 0 : it->second.events.size();
}

uint64_t XsStore::dropped_events(XsConnId conn) const noexcept {
  auto it = conns_.find(conn);
  return it == conns_.end() ? 0 : it->second.dropped_events;
}

}  // namespace xenpath::sim
