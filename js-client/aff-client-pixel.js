/*! aff-client-pixel.js: fires affiliate conversion pixels pushed by a pixelhub server, each exactly once.
 *
 * Start it with the snippet from the README (it queues init() calls until this file has loaded):
 *   _sm_aff_client_pixel.init({ server: 'wss://hub.example/websocket', brandId: 12345, playerId: 'p-42' });
 * Options (README): server, brandId, playerId (absent on pages where no player is logged in: the
 * client then only captures); token (string, or function giving one or its Promise); nonce (CSP);
 * onEvent(type, detail).
 *
 * Guarantees, with the server's help (protocol: docs/protocol.md):
 * - one tab per browser and player holds the connection (Web Locks); another takes over when it closes;
 * - a pixel id is written to localStorage *before* it fires and is never fired again from this browser,
 *   so a redelivery after a lost ack, a reload or a server restart is acknowledged without firing twice;
 * - reconnects back off exponentially with full jitter (capped at 30 s), so a restart causes no herd;
 * - a connection silent for 2.5 heartbeats is treated as dead and replaced;
 * - acks say which pixels failed and why; a failed pixel is never fired again;
 * - on a landing page, the URL params the brand names (its capture_params) are kept in localStorage for
 *   the brand's window and sent once with the hello of each player then known (docs/protocol.md);
 * - for a brand with a consent setting, nothing fires and nothing is acked until the page's CMP (TCF,
 *   Google consent mode) or the page's consent function says yes; the hub keeps the pixels meanwhile
 *   (docs/consent.md).
 */
(function (window, document) {
  'use strict';

  var PROTOCOL = 1;
  var FIRED_MAX = 500;            // fired ids remembered per brand and player
  var BACKOFF_BASE = 1000;        // ms
  var BACKOFF_CAP = 30000;        // ms
  var FIRE_TIMEOUT = 15000;       // ms: a pixel whose load never finishes is acked as a timeout
  var IFRAME_LINGER = 5000;       // ms an iframe pixel stays after load, for its own scripts
  var ACK_DELAY = 100;             // ms acks are gathered before one frame carries them
  var FB_WAIT = 10000;             // ms to wait for fbevents.js before falling back to the image
  var FB_SCRIPT = 'https://connect.facebook.net/en_US/fbevents.js';
  var FB_IMAGE = 'https://www.facebook.com/tr';

  var CAPTURE_WAIT = 2000;         // ms a landing page's hello waits for the brand's capture settings
  var CAPTURE_MAX = 32;            // params kept from one landing
  var CAPTURE_VALUE_MAX = 512;     // characters of one value
  var CAPTURE_SENT_MAX = 20;       // players a capture was sent for, remembered
  var DAY = 86400000;

  var current = null;             // the running client, if any
  var capturing = null;           // the landing page's capture in progress: a Promise, settled either way

  function Client(opts) {
    this.opts = opts;
    this.ask = null;              // the brand's consent question, from the welcome (null: none asked)
    this.granted = null;          // the page's answer: true, false, or null until it gives one
    this.tcData = null;           // the TCF CMP's last answer, for vendor consent
    this.told = null;             // the answer this connection's hub was told
    this.withheld = [];           // pixels held back for want of their vendor's consent, to tell the hub
    this.key = '_sm_aff_px:' + opts.brandId + ':' + opts.playerId;
    this.memory = [];             // ids fired by this page, in case localStorage cannot keep them
    this.acks = [];
    this.results = [];            // acks of pixels that did not fire cleanly
    this.attempt = 0;
    this.heartbeat = 25000;
    this.stopped = false;
    this.sandbox = 'allow-scripts allow-same-origin';  // the brand's, from the welcome
    this.referrer = 'strict-origin-when-cross-origin';
  }

  Client.prototype.emit = function (type, detail) { emit(this.opts, type, detail); };

  // --- which pixels this browser already fired -------------------------------------------------------
  // Stored ids plus this page's own: storage may be readable but full, or absent (private modes).
  Client.prototype.stored = function () {
    try { return JSON.parse(window.localStorage.getItem(this.key)) || []; } catch (e) { return []; }
  };
  Client.prototype.fired = function (id) {
    return this.memory.indexOf(id) !== -1 || this.stored().indexOf(id) !== -1;
  };
  Client.prototype.remember = function (id) {
    this.memory.push(id);
    if (this.memory.length > FIRED_MAX) this.memory.shift();
    var ids = this.stored();
    ids.push(id);
    if (ids.length > FIRED_MAX) ids = ids.slice(ids.length - FIRED_MAX);
    try { window.localStorage.setItem(this.key, JSON.stringify(ids)); } catch (e) { /* memory keeps it */ }
  };

  // --- connection ------------------------------------------------------------------------------------
  Client.prototype.start = function () {
    var self = this;
    var locks = window.navigator && window.navigator.locks;
    if (!locks || typeof locks.request !== 'function') return this.connect();
    var name = 'aff-client-pixel|' + this.opts.server + '|' + this.opts.brandId + '|' + this.opts.playerId;
    locks.request(name, { ifAvailable: true }, function (lock) {
      if (!lock) self.emit('waiting');
      return lock ? self.holdLock() : locks.request(name, function () { return self.holdLock(); });
    }).catch(function () { self.connect(); });
  };

  // Keeps the lock (and so the connection) until this client stops or the tab goes away.
  Client.prototype.holdLock = function () {
    var self = this;
    if (this.stopped) return null;
    return new Promise(function (release) { self.releaseLock = release; self.connect(); });
  };

  // A token function is asked afresh at every connect.
  Client.prototype.withToken = function (then) {
    var self = this, token = this.opts.token;
    if (typeof token !== 'function') return then(token);
    try {
      Promise.resolve(token()).then(function (t) {
        if (typeof t !== 'string' && window.console) console.warn('aff-client-pixel: the token function gave no string');
        then(t);
      }, function () { self.retry(); });
    } catch (e) { this.retry(); }
  };

  Client.prototype.connect = function () {
    var self = this;
    if (this.stopped) return;
    this.withToken(function (token) { self.open(token); });
  };

  Client.prototype.open = function (token) {
    var self = this;
    if (this.stopped) return;
    // With the brand in the URL, the hub checks the page's origin before the upgrade.
    var ws;
    try {
      var url = new URL(this.opts.server, window.location.href);
      url.searchParams.set('brand_id', String(this.opts.brandId));
      ws = new WebSocket(url.href);
    } catch (e) { return this.retry(); }
    this.ws = ws;
    var click = null;
    ws.onopen = function () {
      self.emit('open');
      var hello = { type: 'hello', v: PROTOCOL, brand_id: self.opts.brandId, player_id: String(self.opts.playerId) };
      if (typeof token === 'string' && token) hello.token = token;
      click = unsentClick(self.opts.brandId, String(self.opts.playerId));
      if (click) hello.attribution = { params: click.params, captured_at_ms: click.captured_at_ms };
      ws.send(JSON.stringify(hello));
      self.watch();
    };
    ws.onmessage = function (event) {
      if (ws !== self.ws) return;
      self.watch();
      var msg;
      try { msg = JSON.parse(event.data); } catch (e) { return; }
      if (msg.type === 'welcome') {
        if (click) markSent(self.opts.brandId, String(self.opts.playerId), click);  // the hub has it
        self.heartbeat = msg.heartbeat_ms || self.heartbeat;
        if (typeof msg.iframe_sandbox === 'string') self.sandbox = msg.iframe_sandbox;
        if (typeof msg.referrer_policy === 'string') self.referrer = msg.referrer_policy;
        self.emit('welcome', msg);
        self.told = null;
        self.flushAcks();          // acks that could not be sent on the previous connection
        self.ask = msg.consent || null;
        if (self.ask) self.checkConsent();
      } else if (msg.type === 'ping') {
        self.attempt = 0;          // a connection that lived a heartbeat is healthy: back off from scratch
        ws.send('{"type":"pong"}');
      } else if (msg.type === 'deliver') {
        for (var i = 0; i < msg.pixels.length; i++) self.handle(msg.pixels[i]);
      }
    };
    ws.onclose = function (event) {
      if (ws !== self.ws) return;
      clearTimeout(self.watchdog);
      self.ws = null;
      self.emit('close', { code: event.code, reason: event.reason });
      // An expired token is final, unless a token function can fetch a fresh one.
      var renewable = event.code === 4508 && typeof self.opts.token === 'function';
      if (event.code >= 4500 && event.code <= 4999 && !renewable) {
        self.emit('final', { code: event.code, reason: event.reason });
        if (window.console) console.warn('aff-client-pixel: server refused the session (' + event.code + ' ' + event.reason + ')');
        return self.stop();
      }
      self.retry();
    };
  };

  // Full jitter: a random delay in [0, min(cap, base * 2^attempt)).
  Client.prototype.retry = function () {
    var self = this;
    if (this.stopped) return;
    var delay = Math.random() * Math.min(BACKOFF_CAP, BACKOFF_BASE * Math.pow(2, this.attempt++));
    this.timer = setTimeout(function () { self.connect(); }, delay);
  };

  // Any message proves the connection alive; silence for 2.5 heartbeats means it is dead.
  Client.prototype.watch = function () {
    var self = this, ws = this.ws;
    clearTimeout(this.watchdog);
    this.watchdog = setTimeout(function () { if (ws === self.ws) { ws.close(); ws.onclose({ code: 1006, reason: 'heartbeat' }); } }, this.heartbeat * 2.5);
  };

  Client.prototype.stop = function () {
    this.stopped = true;
    clearTimeout(this.consentTimer);
    clearInterval(this.consentPoll);
    if (this.tcfListener != null && typeof window.__tcfapi === 'function') {
      try { window.__tcfapi('removeEventListener', 2, function () {}, this.tcfListener); } catch (e) { /* the CMP's */ }
    }
    clearTimeout(this.timer);
    clearTimeout(this.watchdog);
    var ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000);
    if (this.releaseLock) this.releaseLock();
  };

  // --- consent ---------------------------------------------------------------------------------------
  // The page's answer, asked the brand's way; no answer within the brand's timeout is no consent (a later
  // answer still counts). The hub is told each change and sends nothing until it hears yes.
  Client.prototype.checkConsent = function () {
    var self = this, ask = this.ask, answered = false;
    if (!ask) return;
    var answer = function (granted, tcData) {
      answered = true;
      clearTimeout(self.consentTimer);
      if (tcData) self.tcData = tcData;
      self.setConsent(granted === true);
    };
    clearTimeout(this.consentTimer);
    this.consentTimer = setTimeout(function () { if (!answered) self.setConsent(false); }, ask.timeout_ms || 3000);
    try {
      if (ask.mode === 'tcf') this.askTcf(answer);
      else if (ask.mode === 'google') this.askGoogle(answer);
      else if (ask.mode === 'callback' && typeof this.opts.consent === 'function') {
        Promise.resolve(this.opts.consent()).then(function (yes) { answer(yes === true); }, function () { answer(false); });
      }
    } catch (e) { answer(false); }
  };

  Client.prototype.setConsent = function (granted) {
    this.granted = granted;
    this.emit('consent', granted);
    // Yes is said again on a change (a vendor may be fine now); no, once.
    if (this.ws && this.ws.readyState === 1 && (granted || this.told !== false)) {
      this.told = granted;
      this.ws.send(JSON.stringify({ type: 'consent', granted: granted }));
    }
  };

  // IAB TCF v2.2: the CMP calls back now and at each change; tcloaded and useractioncomplete are answers
  // (cmpuishown is a question still open). Consent to every purpose the brand lists, unless the GDPR does
  // not apply to this player.
  Client.prototype.askTcf = function (answer) {
    var self = this, waited = 0;
    this.tcfAnswer = answer;      // the listener answers the latest ask, with the latest purposes
    if (this.tcf) return this.tcData && answer(tcfGranted(this.tcData, this.ask.purposes || []));
    this.tcf = 'waiting';         // one listener per client, however often it asks
    var listen = function () {
      if (self.stopped) return;
      if (typeof window.__tcfapi !== 'function') {
        // The CMP's stub may come later than this script, within the timeout.
        if ((waited += 100) < (self.ask.timeout_ms || 3000)) setTimeout(listen, 100);
        else self.tcf = null;     // asked again at the next welcome or consentChanged()
        return;
      }
      self.tcf = 'listening';
      window.__tcfapi('addEventListener', 2, function (tcData, ok) {
        if (!ok || !tcData) return;
        self.tcfListener = tcData.listenerId;
        if (self.stopped || (tcData.eventStatus !== 'tcloaded' && tcData.eventStatus !== 'useractioncomplete')) return;
        self.tcData = tcData;
        self.tcfAnswer(tcfGranted(tcData, (self.ask && self.ask.purposes) || []), tcData);
      });
    };
    listen();
  };

  function tcfGranted(tcData, purposes) {
    if (tcData.gdprApplies === false) return true;
    var consents = (tcData.purpose && tcData.purpose.consents) || {};
    for (var i = 0; i < purposes.length; i++) if (consents[purposes[i]] !== true) return false;
    return true;
  }

  // A pixel naming its TCF vendor needs that vendor's consent too (where the GDPR applies).
  Client.prototype.vendorAllowed = function (pixel) {
    var t = this.tcData;
    if (!this.ask || this.ask.mode !== 'tcf' || !pixel.tcf_vendor_id || (t && t.gdprApplies === false)) return true;
    return !!(t && t.vendor && t.vendor.consents && t.vendor.consents[pixel.tcf_vendor_id] === true);
  };

  // Google consent mode v2: the latest `consent` default or update the page pushed to dataLayer, looked at
  // again twice a second (a CMP may answer at any time; GTM replaces dataLayer.push, so it is not hooked).
  Client.prototype.askGoogle = function (answer) {
    var self = this, seen = -1, asked = true;
    var look = function () {
      var layer = window.dataLayer, state = null;
      if (!layer || layer.length === seen) return;
      seen = layer.length;
      for (var i = 0; i < layer.length; i++) {
        var e = layer[i];
        if (e && e[0] === 'consent' && (e[1] === 'default' || e[1] === 'update') && e[2] && typeof e[2] === 'object') {
          state = state || {};
          for (var k in e[2]) if (Object.prototype.hasOwnProperty.call(e[2], k)) state[k] = e[2][k];
        }
      }
      if (state) {
        var granted = state.ad_storage === 'granted' && state.ad_user_data === 'granted';
        if (asked || granted !== self.granted) answer(granted);
        asked = false;
      }
    };
    clearInterval(this.consentPoll);
    this.consentPoll = setInterval(look, 500);
    look();
  };

  // --- delivery --------------------------------------------------------------------------------------
  Client.prototype.handle = function (pixel) {
    var self = this;
    if (this.ask && this.granted !== true) return;  // no consent: not fired, not acked; the hub keeps it
    if (this.fired(pixel.id)) {
      this.emit('skip', pixel);
      return this.ack(pixel.id);
    }
    if (!this.vendorAllowed(pixel)) {
      this.emit('withheld', pixel);
      this.withheld.push(pixel.id);
      return this.flushAcks();
    }
    this.remember(pixel.id);     // before firing: a crash now loses this pixel rather than doubling it
    var fire = FIRE[pixel.kind];
    var finished = false;
    var done = function (result) {  // result: absent when it fired cleanly
      if (finished) return;
      finished = true;
      if (result) { result.id = pixel.id; self.emit('result', result); }
      self.ack(pixel.id, result);
    };
    this.emit('fire', pixel);
    try { fire ? fire(pixel, this, done) : done(failure('other')); } catch (e) { done(failure('js_threw', e)); }
    setTimeout(function () { done(failure('timeout')); }, FIRE_TIMEOUT);
  };

  // The hub words each reason; only an exception's message travels.
  function failure(reason, e) {
    return { result: 'failed', reason: reason, message: e ? String(e.name ? e.name + ': ' + e.message : e).slice(0, 200) : undefined };
  }

  // Acks leave in batches, at most one frame per ACK_DELAY, so a backlog of pixels firing one by one stays
  // far below the hub's message rate; an ack that cannot be sent now waits for the next connection
  // instead of being dropped, so a fired pixel is not offered to another device.
  Client.prototype.ack = function (id, result) {
    if (result) this.results.push(result); else this.acks.push(id);
    this.flushAcks();
  };
  Client.prototype.flushAcks = function () {
    var self = this;
    if (this.ackTimer || (!this.acks.length && !this.results.length && !this.withheld.length)) return;
    this.ackTimer = setTimeout(function () {
      self.ackTimer = null;
      var open = function () { return self.ws && self.ws.readyState === 1; };
      while ((self.acks.length || self.results.length) && open()) {
        var ids = self.acks.splice(0, 256), results = self.results.splice(0, 256);
        self.ws.send(JSON.stringify(results.length ? { type: 'ack', ids: ids, results: results } : { type: 'ack', ids: ids }));
        self.emit('ack', ids.concat(results.map(function (r) { return r.id; })));
      }
      // Held back pixels are this connection's to tell: a new one is sent them again, and asks again.
      while (self.withheld.length && open()) self.ws.send(JSON.stringify({ type: 'withheld', ids: self.withheld.splice(0, 256) }));
      self.withheld = [];
    }, ACK_DELAY);
  };

  function onBody(fn) {
    if (document.body) return fn(document.body);
    document.addEventListener('DOMContentLoaded', function () { fn(document.body); });
  }

  // An error event (blocked, 4xx, not an image) is a failure; the request went out all the same.
  function image(url, done, referrer, reason) {
    var img = new Image(1, 1);
    img.onload = function () { done(); };
    img.onerror = function () { done(failure(reason || 'image_error')); };
    if (referrer) img.referrerPolicy = referrer;
    img.src = url;
  }

  // Facebook: send through a live fbq (fbevents.js loaded, by the page or by us); while it loads, hold
  // the pixels; if it cannot load, send each as Meta's image beacon instead. Never queue into a stub, so an
  // event can never go out both ways.
  var FB_STANDARD = ('AddPaymentInfo AddToCart AddToWishlist CompleteRegistration Contact CustomizeProduct Donate ' +
    'FindLocation InitiateCheckout Lead PageView Purchase Schedule Search StartTrial SubmitApplication Subscribe ViewContent').split(' ');
  var fb = { state: 'idle', waiting: [], inited: {}, timer: null };

  function fbLive() { return typeof window.fbq === 'function' && !!window.fbq.callMethod; }

  // trackSingle: only this pixel id gets the event, not the brand's own Meta pixels on the same page.
  function fbSend(p) {
    if (!fb.inited[p.pixel_id]) { window.fbq('init', p.pixel_id); fb.inited[p.pixel_id] = true; }
    var method = FB_STANDARD.indexOf(p.event) === -1 ? 'trackSingleCustom' : 'trackSingle';
    window.fbq(method, p.pixel_id, p.event, p.params || {}, { eventID: p.event_id || p.id });
  }

  function fbImage(p, done) {
    var url = FB_IMAGE + '?id=' + encodeURIComponent(p.pixel_id) + '&ev=' + encodeURIComponent(p.event) +
      '&noscript=1&eid=' + encodeURIComponent(p.event_id || p.id);
    var params = p.params || {};
    for (var k in params) {
      if (Object.prototype.hasOwnProperty.call(params, k)) {
        var v = params[k];
        url += '&cd[' + encodeURIComponent(k) + ']=' + encodeURIComponent(typeof v === 'object' ? JSON.stringify(v) : v);
      }
    }
    image(url, function (r) { done(r || { result: 'fired', reason: 'fb_image_fallback' }); }, null, 'fb_image_error');
  }

  // The queueing stub fbevents.js expects to find, for when the page has no Meta pixel of its own.
  function fbStub() {
    var q = function () { if (q.callMethod) q.callMethod.apply(q, arguments); else q.queue.push(arguments); };
    q.push = q; q.loaded = true; q.version = '2.0'; q.queue = [];
    window.fbq = q;
    if (!window._fbq) window._fbq = q;
  }

  function fbSettle() {
    clearInterval(fb.timer);
    var live = fbLive();
    fb.state = live ? 'idle' : 'failed';
    var waiting = fb.waiting.splice(0);
    for (var i = 0; i < waiting.length; i++) {
      if (live) { fbSend(waiting[i].p); waiting[i].done(); } else fbImage(waiting[i].p, waiting[i].done);
    }
  }

  function fbLoad() {
    fb.state = 'loading';
    if (!window.fbq) {
      fbStub();
      var s = document.createElement('script');
      s.async = true;
      s.src = FB_SCRIPT;
      s.onload = s.onerror = fbSettle;
      (document.head || document.documentElement).appendChild(s);
    }
    // The page's own fbq may be a stub still loading (or blocked): wait for it, within FB_WAIT.
    var waited = 0;
    fb.timer = setInterval(function () {
      waited += 100;
      if (fbLive() || waited >= FB_WAIT) fbSettle();
    }, 100);
  }

  var FIRE = {
    image: function (p, client, done) { image(p.url, done, client.referrer); },

    iframe: function (p, client, done) {
      onBody(function (body) {
        var f = document.createElement('iframe');
        f.setAttribute('sandbox', client.sandbox);
        f.referrerPolicy = client.referrer;
        f.width = f.height = '1';
        f.setAttribute('aria-hidden', 'true');
        f.tabIndex = -1;
        f.style.cssText = 'position:absolute;width:1px;height:1px;border:0;left:-10px;top:-10px;visibility:hidden';
        var gone = function () { if (f.parentNode) f.parentNode.removeChild(f); };
        f.onload = function () { done(); setTimeout(gone, IFRAME_LINGER); };
        setTimeout(gone, FIRE_TIMEOUT + IFRAME_LINGER);
        f.src = p.url;
        body.appendChild(f);
      });
    },

    // An external conversion tag: load or error both mean the request went out; the element goes after.
    script: function (p, client, done) {
      var s = document.createElement('script');
      if (client.opts.nonce) s.nonce = client.opts.nonce;
      s.referrerPolicy = client.referrer;
      s.async = true;
      var gone = function () { if (s.parentNode) s.parentNode.removeChild(s); };
      s.onload = function () { gone(); done(); };
      s.onerror = function () { gone(); done(failure('script_error')); };
      s.src = p.url;
      (document.head || document.documentElement).appendChild(s);
    },

    // Compiled first: a block that does not parse runs nothing. Inline scripts run on insertion, so an
    // error event meanwhile is this block's (also how a parse error shows under a CSP without eval).
    js: function (p, client, done) {
      try { new Function(p.code); } catch (e) { if (e instanceof SyntaxError) return done(failure('js_syntax', e)); }
      var thrown = null, listen = function (ev) { thrown = thrown || ev.error || ev.message; };
      window.addEventListener('error', listen);
      var s = document.createElement('script');
      if (client.opts.nonce) s.nonce = client.opts.nonce;
      s.text = p.code;
      (document.head || document.documentElement).appendChild(s);
      window.removeEventListener('error', listen);
      s.parentNode.removeChild(s);
      done(thrown ? failure(thrown instanceof SyntaxError ? 'js_syntax' : 'js_threw', thrown) : undefined);
    },

    facebook: function (p, client, done) {
      if (fbLive()) { fbSend(p); return done(); }
      if (fb.state === 'failed') return fbImage(p, done);
      fb.waiting.push({ p: p, done: done });
      if (fb.state === 'idle') fbLoad();
    }
  };

  // --- capture: the affiliate click on a landing page -------------------------------------------------
  // Kept per brand in localStorage: { params, captured_at_ms, window_days, sent: [player ids] }.
  function clickKey(brandId) { return '_sm_aff_px_click:' + brandId; }
  var clickMemory = {};           // per brand, when localStorage cannot keep it

  function readClick(brandId) {
    var click = clickMemory[brandId];
    try { click = JSON.parse(window.localStorage.getItem(clickKey(brandId))) || click; } catch (e) { /* memory */ }
    if (!click || !click.params || !(click.captured_at_ms + click.window_days * DAY > Date.now())) return null;
    return click;
  }
  function writeClick(brandId, click) {
    clickMemory[brandId] = click;
    try { window.localStorage.setItem(clickKey(brandId), JSON.stringify(click)); } catch (e) { /* memory keeps it */ }
  }
  function unsentClick(brandId, playerId) {
    var click = readClick(brandId);
    return click && (click.sent || []).indexOf(playerId) === -1 ? click : null;
  }
  function markSent(brandId, playerId, sentClick) {
    var click = readClick(brandId);
    if (!click || click.captured_at_ms !== sentClick.captured_at_ms) return;  // a newer landing since
    click.sent = (click.sent || []).concat([playerId]).slice(-CAPTURE_SENT_MAX);
    writeClick(brandId, click);
  }

  function captures(patterns, name) {
    for (var i = 0; i < patterns.length; i++) {
      var p = patterns[i];
      if (p.charAt(p.length - 1) === '*' ? name.length > p.length - 1 && name.indexOf(p.slice(0, -1)) === 0 : p === name) return true;
    }
    return false;
  }

  // The URL params the brand captures, as the hub bounds them: lower-case names, values without
  // control characters, at most CAPTURE_MAX.
  function pick(search, patterns) {
    var params = {}, count = 0;
    search.forEach(function (value, name) {
      name = name.toLowerCase();
      if (count >= CAPTURE_MAX || params[name] !== undefined || !/^[a-z][a-z0-9_]{0,63}$/.test(name) || !captures(patterns, name)) return;
      if (!value || value.length > CAPTURE_VALUE_MAX || /[\u0000-\u001f\u007f-\u009f]/.test(value)) return;
      params[name] = value;
      count++;
    });
    return count ? params : null;
  }

  // Asks the hub what the brand captures, then keeps this landing's click (first or last touch).
  function capture(opts) {
    var search;
    try { search = new URLSearchParams(window.location.search); } catch (e) { return null; }
    if (!search.toString() || typeof window.fetch !== 'function') return null;
    var url;
    try {
      url = new URL(opts.server, window.location.href);
      url.protocol = url.protocol === 'wss:' ? 'https:' : url.protocol === 'ws:' ? 'http:' : url.protocol;
      url = new URL('client/v1/brands/' + encodeURIComponent(String(opts.brandId)) + '/capture', url);
    } catch (e) { return null; }
    return window.fetch(url.href, { credentials: 'omit', mode: 'cors' }).then(function (res) {
      if (!res.ok) throw new Error('capture settings: HTTP ' + res.status);
      return res.json();
    }).then(function (settings) {
      var params = pick(search, settings.params || []);
      if (!params) return;
      var kept = readClick(opts.brandId);
      if (kept && settings.touch === 'first') return;
      writeClick(opts.brandId, { params: params, captured_at_ms: Date.now(), window_days: settings.window_days || 30, sent: [] });
      emit(opts, 'capture', params);
    })['catch'](function (e) {
      if (window.console) console.warn('aff-client-pixel: nothing captured (' + e.message + ')');
    });
  }

  function emit(opts, type, detail) {
    if (typeof opts.onEvent === 'function') {
      try { opts.onEvent(type, detail); } catch (e) { /* an observer must not break anything */ }
    }
  }

  // --- public API ------------------------------------------------------------------------------------
  function init(opts) {
    if (!opts || !opts.server || opts.brandId == null) {
      if (window.console) console.error('aff-client-pixel: init needs server and brandId (and playerId once known)');
      return;
    }
    if (!capturing) capturing = capture(opts) || true;
    if (opts.playerId == null || opts.playerId === '') {
      if (current) { current.stop(); current = null; }  // no player on this page: capture only
      return;
    }
    if (current) {
      var o = current.opts;
      if (o.server === opts.server && String(o.brandId) === String(opts.brandId) && String(o.playerId) === String(opts.playerId) &&
          (o.token === opts.token || (typeof o.token === 'function' && typeof opts.token === 'function'))) return;
      current.stop();
    }
    var client = current = new Client(opts);
    // A landing page that also knows the player says hello once its click is kept (or after a short wait).
    if (capturing === true) return client.start();
    var started = false, start = function () { if (!started) { started = true; client.start(); } };
    capturing.then(start);
    setTimeout(start, CAPTURE_WAIT);
  }

  var queued = (window._sm_aff_client_pixel && window._sm_aff_client_pixel.q) || [];
  window._sm_aff_client_pixel = {
    init: init,
    stop: function () { if (current) { current.stop(); current = null; } },
    // The page's consent may have changed (its CMP answered, the player changed their choice): ask again.
    consentChanged: function () { if (current) current.checkConsent(); },
    // The click kept for a brand ({ name: value }), or null: for a brand that reports it in its own
    // registration event.
    captured: function (brandId) { var c = readClick(brandId); return c ? c.params : null; },
    version: '1.2.0'
  };
  for (var i = 0; i < queued.length; i++) init(queued[i]);
})(window, document);
