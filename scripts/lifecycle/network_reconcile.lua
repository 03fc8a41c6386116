-- At daemon start: bring networks and volumes back in line with the database before any
-- container is touched (net.reconcile rebuilds the nft table, recreates proxies and taps
-- still owned, removes stray taps; volume.reconcile forgets interrupted creations).
-- Runs once per daemon process, not again on a script reload.
if not _G.__moonbox_net_reconciled then
  _G.__moonbox_net_reconciled = true
  timer.after(0, function()
    if package.loaded.volume then
      local cleaned = volume.reconcile()
      if #cleaned > 0 then
        log.info("volume: reconcile removed %d unfinished volume(s)", #cleaned)
      end
    end
    if package.loaded.net then
      local r, msg = net.reconcile()
      if r then
        log.info("net: reconcile: %d network(s), %d endpoint(s), %d port(s), %d stray link(s) removed",
                 r.networks, r.endpoints, r.ports, #r.links_removed)
      else
        log.error("net: reconcile failed: %s", msg)
      end
    end
  end)
end
