// safedrift dashboard: asks for the API token once (kept in this tab's
// session storage), fetches server-rendered fragments with it, and routes
// on the URL hash: #/ (models), #/runs/ID (one run), #/alerts.
(function () {
  "use strict";
  var KEY = "safedrift.token";
  var main = document.getElementById("main");
  var form = document.getElementById("token-form");

  function token() { return sessionStorage.getItem(KEY); }

  function view() {
    var h = location.hash.replace(/^#/, "") || "/";
    var m = h.match(/^\/runs\/([A-Za-z0-9_]+)$/);
    if (m) return { path: "/ui/runs/" + m[1], nav: "models" };
    if (h === "/alerts") return { path: "/ui/alerts", nav: "alerts" };
    return { path: "/ui/overview", nav: "models" };
  }

  function setNav(name) {
    document.querySelectorAll("nav a").forEach(function (a) {
      a.classList.toggle("active", a.dataset.nav === name);
    });
  }

  function askToken(message) {
    form.hidden = false;
    main.hidden = true;
    document.getElementById("token-message").textContent = message || "";
    document.getElementById("token").focus();
  }

  function load() {
    var v = view();
    setNav(v.nav);
    var headers = { "Accept": "text/html" };
    var t = token();
    if (t) headers["Authorization"] = "Bearer " + t;
    main.setAttribute("aria-busy", "true");
    fetch(v.path, { headers: headers }).then(function (r) {
      if (r.status === 401) {
        sessionStorage.removeItem(KEY);
        askToken(t ? "That token was not accepted." : "");
        return null;
      }
      return r.text().then(function (body) {
        form.hidden = true;
        main.hidden = false;
        main.innerHTML = body;
        main.setAttribute("aria-busy", "false");
        document.body.dataset.loaded = v.nav + ":" + r.status;
      });
    }).catch(function () {
      main.innerHTML = '<p class="error">The daemon cannot be reached.</p>';
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

  document.getElementById("forget").addEventListener("click", function () {
    sessionStorage.removeItem(KEY);
    askToken("Token forgotten.");
  });

  // Answers may be harmful: they stay blurred until clicked.
  main.addEventListener("click", function (e) {
    var answer = e.target.closest(".answer");
    if (answer && answer.classList.contains("blurred")) {
      answer.classList.remove("blurred");
      answer.setAttribute("aria-hidden", "false");
    }
  });

  window.addEventListener("hashchange", load);
  if (token()) {
    load();
  } else {
    // Ask for a token only when the daemon has one configured.
    fetch("/dashboard/auth").then(function (r) { return r.json(); }).then(function (a) {
      if (a.token_required) askToken(""); else load();
    }).catch(function () { load(); });
  }
})();
