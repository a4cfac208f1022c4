// safedrift dashboard: asks for the API token once (kept in this tab's
// session storage), fetches server-rendered fragments with it, and routes
// on the address: / (lineages), /runs/ID (one run: the link in every
// alert), /alerts; an API address opened in the browser (/api/v1/...)
// shows the JSON fetched with the token. Old #/runs/ID links still work.
(function () {
  "use strict";
  var KEY = "safedrift.token";
  var main = document.getElementById("main");
  var form = document.getElementById("token-form");
  var forget = document.getElementById("forget");
  var RUN = /^\/runs\/([A-Za-z0-9_]+)\/?$/;
  var LEGACY = /^#\/(runs\/[A-Za-z0-9_]+|alerts)?$/;
  var generation = 0;

  function token() { return sessionStorage.getItem(KEY); }

  // #/runs/ID and #/alerts, the addresses of earlier versions.
  function upgradeHash() {
    if (LEGACY.test(location.hash)) {
      history.replaceState(null, "", location.hash.slice(1) || "/");
      return true;
    }
    return false;
  }

  function view() {
    var p = location.pathname;
    var m = p.match(RUN);
    if (m) return { path: "/ui/runs/" + m[1], nav: "models", json: false };
    if (p === "/alerts" || p === "/alerts/") return { path: "/ui/alerts", nav: "alerts", json: false };
    if (p.indexOf("/api/") === 0) return { path: p + location.search, nav: "api", json: true };
    return { path: "/ui/overview", nav: "models", json: false };
  }

  function setNav(name) {
    document.querySelectorAll("nav a").forEach(function (a) {
      a.classList.toggle("active", a.dataset.nav === name);
    });
  }

  function askToken(message) {
    form.hidden = false;
    main.hidden = true;
    forget.hidden = true;
    document.getElementById("token-message").textContent = message || "";
    document.getElementById("token").focus();
  }

  function element(tag, className, text) {
    var e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // An API answer, pretty-printed (built as text: nothing in it is markup).
  function showJson(path, status, body) {
    var section = element("section", "panel api");
    section.dataset.api = path;
    section.appendChild(element("h2", "", "GET " + path));
    var sub = element("div", "sub", "The API's answer (HTTP " + status + "), fetched with this tab's token. ");
    var run = path.match(/^\/api\/v1\/runs\/([A-Za-z0-9_]+)$/);
    if (run) {
      var a = element("a", "", "Open the run's page");
      a.href = "/runs/" + run[1];
      a.dataset.route = "";
      sub.appendChild(a);
      section.dataset.run = run[1];
    }
    section.appendChild(sub);
    var text = body;
    try { text = JSON.stringify(JSON.parse(body), null, 2); } catch (e) { /* shown as it came */ }
    section.appendChild(element("pre", "json", text));
    main.replaceChildren(section);
  }

  // A fragment that could not be shown: the API's error message.
  function showError(status, body) {
    var message = "HTTP " + status;
    try { message = JSON.parse(body).error || message; } catch (e) { /* not JSON */ }
    var section = element("section", "panel");
    section.appendChild(element("p", "error", message));
    var back = element("a", "", "← all lineages");
    back.href = "/";
    back.dataset.route = "";
    section.appendChild(back);
    main.replaceChildren(section);
  }

  // The element the address's #fragment names (a lineage, an alert).
  function scrollToTarget() {
    document.querySelectorAll(".targeted").forEach(function (e) { e.classList.remove("targeted"); });
    if (!location.hash || location.hash.length < 2) return;
    var el = document.getElementById(decodeURIComponent(location.hash.slice(1)));
    if (el) {
      el.classList.add("targeted");
      el.scrollIntoView({ block: "start" });
    }
  }

  function load() {
    var v = view();
    var mine = ++generation;
    setNav(v.nav);
    var headers = { "Accept": v.json ? "application/json" : "text/html" };
    var t = token();
    if (t) headers["Authorization"] = "Bearer " + t;
    main.setAttribute("aria-busy", "true");
    fetch(v.path, { headers: headers }).then(function (r) {
      if (mine !== generation) return null;
      if (r.status === 401) {
        sessionStorage.removeItem(KEY);
        askToken(t ? "That token was not accepted." : "");
        return null;
      }
      return r.text().then(function (body) {
        if (mine !== generation) return;
        form.hidden = true;
        main.hidden = false;
        forget.hidden = !token();
        if (v.json) showJson(v.path, r.status, body);
        else if (!r.ok) showError(r.status, body);
        else main.innerHTML = body;
        main.setAttribute("aria-busy", "false");
        document.body.dataset.loaded = v.nav + ":" + r.status;
        scrollToTarget();
      });
    }).catch(function () {
      if (mine !== generation) return;
      main.replaceChildren(element("p", "error", "The daemon cannot be reached."));
      main.setAttribute("aria-busy", "false");
    });
  }

  form.addEventListener("submit", function (e) {
    e.preventDefault();
    var value = document.getElementById("token").value.trim();
    if (value) sessionStorage.setItem(KEY, value);
    document.getElementById("token").value = "";
    load();
  });

  forget.addEventListener("click", function () {
    sessionStorage.removeItem(KEY);
    askToken("Token forgotten.");
  });

  // The dashboard's own links load in place (the address changes, so it
  // can be copied, reloaded and gone back to); others navigate as usual.
  document.addEventListener("click", function (e) {
    if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    var a = e.target.closest("a[data-route]");
    if (!a) return;
    var url = new URL(a.getAttribute("href"), location.href);
    if (url.origin !== location.origin) return;
    e.preventDefault();
    var samePage = url.pathname === location.pathname && url.search === location.search;
    history.pushState(null, "", url.pathname + url.search + url.hash);
    if (samePage && url.hash) scrollToTarget(); else load();
  });

  // Answers may be harmful: they stay blurred until clicked.
  main.addEventListener("click", function (e) {
    var answer = e.target.closest(".answer");
    if (answer && answer.classList.contains("blurred")) {
      answer.classList.remove("blurred");
      answer.setAttribute("aria-hidden", "false");
    }
  });

  window.addEventListener("popstate", load);
  window.addEventListener("hashchange", function () {
    if (upgradeHash()) load(); else scrollToTarget();
  });
  upgradeHash();
  if (token()) {
    load();
  } else {
    // Ask for a token only when the daemon has one configured.
    fetch("/dashboard/auth").then(function (r) { return r.json(); }).then(function (a) {
      if (a.token_required) askToken(""); else load();
    }).catch(function () { load(); });
  }
})();
