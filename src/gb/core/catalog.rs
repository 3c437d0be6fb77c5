//! Queries and their answers: DeviceInfo/DeviceStatus, Catalog (answers and notifications),
//! RecordInfo, paced after registrations.
use super::*;

impl Core {
    /// Sends a MANSCDP MESSAGE to a device (or one of its channels, `target`).
    pub(super) fn send_manscdp(
        &mut self,
        device: &str,
        target: &str,
        body: Vec<u8>,
        pending: Pending,
    ) -> Result<(), GbError> {
        let d = self.devices.get(device).ok_or_else(|| GbError::NoDevice(device.to_string()))?;
        let peer = d.peer();
        let uri = format!("sip:{target}@{}", d.rec.addr);
        let to = format!("<sip:{target}@{}>", self.sip.domain);
        let call_id = random_token(20);
        self.send_request(
            peer,
            Method::Message,
            &uri,
            to,
            &call_id,
            &random_token(10),
            1,
            vec![],
            Some("Application/MANSCDP+xml"),
            body,
            Some(pending),
        )
    }

    pub(super) fn query(&mut self, device: &str, cmd: &'static str, background: bool) -> Result<u32, GbError> {
        let sn = self.next_sn();
        let body = manscdp::build("Query", cmd, sn, device, "", true);
        let pending = Pending::Query { device: device.to_string(), cmd, background };
        if let Err(e) = self.send_manscdp(device, device, body, pending) {
            if let Some(suppressed) = self.peer_log.check(self.now) {
                warn!(%device, suppressed, "{cmd} query not sent: {e}");
            }
            return Err(e);
        }
        Ok(sn)
    }

    /// DeviceInfo + Catalog after a registration, paced: a device at most once per QUERY_PACE,
    /// all devices together `queries_per_second`; a device whose address (or the background
    /// share) has no transaction room left stays due, without using the budget, for a later tick.
    pub(super) fn send_due_queries(&mut self, now: Instant) {
        let due: Vec<(String, IpAddr)> = self
            .devices
            .values()
            .filter(|d| d.query_due && d.rec.online)
            .map(|d| (d.rec.id.clone(), d.rec.addr.ip()))
            .collect();
        let background = (self.sip.max_transactions / 2).max(1);
        for (id, ip) in due {
            if now.duration_since(self.query_window.0) >= Duration::from_secs(1) {
                self.query_window = (now, 0);
            }
            if self.query_window.1 >= self.sip.queries_per_second || self.tx.group_count("background") + 2 > background
            {
                return;
            }
            if self.tx.group_count(&format!("peer {ip}")) + 2 > self.sip.max_transactions_per_peer {
                continue;
            }
            let Some(d) = self.devices.get_mut(&id) else { continue };
            d.query_due = false;
            if d.queried.is_some_and(|t| now.duration_since(t) < QUERY_PACE) {
                continue;
            }
            d.queried = Some(now);
            self.query_window.1 += 1;
            let _ = self.query(&id, "DeviceInfo", true);
            if let Ok(sn) = self.query(&id, "Catalog", true) {
                self.start_catalog(&id, sn, now);
            }
        }
    }

    pub(super) fn start_catalog(&mut self, device: &str, sn: u32, now: Instant) {
        self.catalogs.retain(|(d, _), _| d != device);
        if self.catalogs.len() >= MAX_AGGREGATIONS {
            self.counters.aggregations_refused.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = self.catalog_log.check(now) {
                warn!(%device, suppressed, "catalog answer not awaited: {MAX_AGGREGATIONS} aggregations open");
            }
            return;
        }
        self.catalogs.insert(
            (device.to_string(), sn),
            Aggregation { sum: u32::MAX, items: BTreeMap::new(), last: now, reply: None },
        );
    }

    pub(super) fn answer_query(&mut self, device: &str, cmd: &'static str, m: &Manscdp) {
        if let Some((reply, _)) = self.queries.remove(&(device.to_string(), cmd, m.sn)) {
            let fields =
                m.el.children
                    .iter()
                    .filter(|c| c.children.is_empty())
                    .map(|c| (c.name.clone(), c.text.trim().to_string()))
                    .collect();
            let _ = reply.send(Ok(fields));
        }
    }

    /// A Catalog answer or notification from the device's registered source (D51). An answer is
    /// taken only under the SN of our own query; a notification (`Notify`) only with items, merged
    /// by DeviceID (Event DEL removes). Neither can erase a known list (issue 8, hole 14).
    pub(super) fn on_catalog(&mut self, device: &str, m: &Manscdp, now: Instant) {
        let (sum, items) = manscdp::catalog_events(m);
        if m.root == "Notify" {
            return self.on_catalog_notify(device, m.sn, items, now);
        }
        let key = (device.to_string(), m.sn);
        let Some(agg) = self.catalogs.get_mut(&key) else {
            self.counters.catalogs_refused.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = self.catalog_log.check(now) {
                warn!(%device, sn = m.sn, items = items.len(), suppressed, "Catalog answer to no query of ours (or too late): ignored");
            }
            return;
        };
        agg.sum = sum;
        agg.last = now;
        let mut dropped = 0u64;
        for (it, _) in items {
            if agg.items.len() < MAX_AGG_ITEMS || agg.items.contains_key(&it.device_id) {
                agg.items.insert(it.device_id.clone(), it);
            } else {
                dropped += 1;
            }
        }
        if agg.items.len() as u32 >= agg.sum {
            self.finish_catalog(&key);
        }
        self.items_dropped(device, "Catalog", dropped, now);
    }

    pub(super) fn items_dropped(&mut self, device: &str, what: &str, dropped: u64, now: Instant) {
        if dropped == 0 {
            return;
        }
        self.counters.aggregation_items_dropped.fetch_add(dropped, Ordering::Relaxed);
        if let Some(suppressed) = self.catalog_log.check(now) {
            warn!(%device, what, dropped, suppressed, "items beyond {MAX_AGG_ITEMS} dropped");
        }
    }

    pub(super) fn on_catalog_notify(
        &mut self,
        device: &str,
        sn: u32,
        items: Vec<(CatalogItem, CatalogEvent)>,
        now: Instant,
    ) {
        let unix = self.unix();
        if items.is_empty() {
            self.counters.catalogs_refused.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = self.catalog_log.check(now) {
                warn!(%device, sn, suppressed, "Catalog notification without items: ignored");
            }
            return;
        }
        let Some(d) = self.devices.get_mut(device) else { return };
        let mut dropped = 0u64;
        for (it, event) in items {
            let at = d.rec.channels.iter().position(|c| c.device_id == it.device_id);
            match (event, at) {
                (CatalogEvent::Delete, Some(i)) => {
                    d.rec.channels.remove(i);
                }
                (CatalogEvent::Delete, None) => {}
                (CatalogEvent::Upsert, Some(i)) => d.rec.channels[i] = it,
                (CatalogEvent::Upsert, None) if d.rec.channels.len() < MAX_AGG_ITEMS => d.rec.channels.push(it),
                (CatalogEvent::Upsert, None) => dropped += 1,
            }
        }
        d.rec.catalog_at = Some(unix);
        let n = d.rec.channels.len();
        if let Some(suppressed) = self.state_log.check(now) {
            info!(%device, channels = n, suppressed, "catalog notification applied");
        }
        self.persist(device);
        self.event(GbEvent::Catalog { device: device.to_string(), channels: n });
        self.items_dropped(device, "Catalog notification", dropped, now);
    }

    pub(super) fn finish_catalog(&mut self, key: &(String, u32)) {
        let unix = self.unix();
        let Some(agg) = self.catalogs.remove(key) else { return };
        let Some(d) = self.devices.get_mut(&key.0) else { return };
        let complete = agg.items.len() as u32 >= agg.sum;
        if agg.items.is_empty() && !d.rec.channels.is_empty() {
            self.counters.empty_catalogs_ignored.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = self.catalog_log.check(self.now) {
                warn!(device = %key.0, known = d.rec.channels.len(), suppressed, "empty catalog does not erase the known channel list");
            }
            return;
        }
        if !complete && agg.items.len() < d.rec.channels.len() {
            info!(device = %key.0, got = agg.items.len(), sum = agg.sum, "partial catalog kept aside (smaller than the current list)");
            return;
        }
        d.rec.channels = agg.items.into_values().collect();
        d.rec.catalog_at = Some(unix);
        let n = d.rec.channels.len();
        info!(device = %key.0, channels = n, complete, "catalog updated");
        self.persist(&key.0);
        self.event(GbEvent::Catalog { device: key.0.clone(), channels: n });
    }

    pub(super) fn on_record_info(&mut self, device: &str, m: &Manscdp, now: Instant) {
        let (sum, items) = manscdp::record_info(m);
        let key = (device.to_string(), m.sn);
        let Some(agg) = self.records.get_mut(&key) else { return };
        agg.sum = sum;
        agg.last = now;
        let mut dropped = 0u64;
        for it in items {
            if agg.items.len() < MAX_AGG_ITEMS {
                // De-duplicated on start+end (wvp).
                agg.items.insert(format!("{}|{}|{}", it.start_time, it.end_time, it.device_id), it);
            } else {
                dropped += 1;
            }
        }
        if agg.items.len() as u32 >= agg.sum {
            if let Some(agg) = self.records.remove(&key) {
                if let Some(r) = agg.reply {
                    let _ = r.send(Ok(agg.items.into_values().collect()));
                }
            }
        }
        self.items_dropped(device, "RecordInfo", dropped, now);
    }

    /// Catalog / RecordInfo aggregations and single-answer queries past their deadline.
    pub(super) fn expire_aggregations(&mut self, now: Instant) {
        // Catalog and RecordInfo answers that stopped short of SumNum.
        let stale = self.gb.catalog_timeout.0;
        let done: Vec<_> =
            self.catalogs.iter().filter(|(_, a)| now.duration_since(a.last) > stale).map(|(k, _)| k.clone()).collect();
        for k in done {
            self.finish_catalog(&k);
        }
        let done: Vec<_> =
            self.records.iter().filter(|(_, a)| now.duration_since(a.last) > stale).map(|(k, _)| k.clone()).collect();
        for k in done {
            if let Some(a) = self.records.remove(&k) {
                if let Some(r) = a.reply {
                    let _ = r.send(if a.items.is_empty() && a.sum == u32::MAX {
                        Err(GbError::NoAnswer("no RecordInfo answer".into()))
                    } else {
                        Ok(a.items.into_values().collect())
                    });
                }
            }
        }
        let late: Vec<_> = self.queries.iter().filter(|(_, (_, d))| *d <= now).map(|(k, _)| k.clone()).collect();
        for k in late {
            if let Some((reply, _)) = self.queries.remove(&k) {
                let _ = reply.send(Err(GbError::NoAnswer(format!("no {} answer", k.1))));
            }
        }
    }
}
