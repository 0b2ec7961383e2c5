// Keeps a dashboard page live: on each "change" from /stream, fetch this URL again as a
// partial and swap the content. At most one refresh in flight; a change during it queues one.
(function () {
  var content = document.getElementById("content");
  var state = document.getElementById("live");
  if (!content || !window.EventSource) return;
  var busy = false, again = false, updates = 0;
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(window.location.href, {headers: {"X-Partial": "1"}, credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        content.innerHTML = html;
        updates += 1;
        document.body.setAttribute("data-updates", String(updates));
        if (state) state.textContent = "live, updated " + new Date().toLocaleTimeString();
      })
      .catch(function () { if (state) state.textContent = "update failed"; })
      .finally(function () { busy = false; if (again) { again = false; refresh(); } });
  }
  var source = null;
  function open() {
    source = new EventSource("/stream");
    source.addEventListener("change", refresh);
    source.onopen = function () { if (state) state.textContent = "live"; };
    source.onerror = function () { if (state) state.textContent = "reconnecting"; };
  }
  // A page left for another may be kept in the back/forward cache with its stream open; a
  // browser allows only six connections to one host, so a few clicks would stall the next page.
  window.addEventListener("pagehide", function () { if (source) { source.close(); source = null; } });
  window.addEventListener("pageshow", function (e) { if (e.persisted) { open(); refresh(); } });
  open();
})();
