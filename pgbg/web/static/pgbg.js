/* pgbg dashboard: when the server offers /events (LISTEN), tell the live fragments that
   the queue changed; they re-fetch themselves (hx-trigger "pgbg:changed from:body").
   Without JavaScript, or without events, pages still work and poll. */
(function () {
  "use strict";
  var url = document.body && document.body.dataset.events;
  if (!url || !window.EventSource) { return; }
  var source = new EventSource(url);
  source.onmessage = function () {
    document.body.dispatchEvent(new CustomEvent("pgbg:changed"));
  };
  window.addEventListener("pagehide", function () { source.close(); });
}());
