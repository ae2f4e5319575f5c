/* recommender widget: <script src="https://HOST/widget.js" async></script>
   then <div data-article-id="ID" data-k="5"></div> anywhere on the page.
   Everything is inserted with textContent, never as HTML. */
(function () {
  "use strict";
  var script = document.currentScript;
  var api = (script && (script.getAttribute("data-api") || new URL(script.src, location.href).origin)) || "";
  var STYLE_ID = "rec-widget-style";

  function style() {
    if (document.getElementById(STYLE_ID)) return;
    var s = document.createElement("style");
    s.id = STYLE_ID;
    s.textContent =
      ".rec-related{font:15px/1.4 system-ui,sans-serif;border-top:2px solid #1a1a1a;margin:1.5em 0;padding-top:.5em}" +
      ".rec-related h2{font-size:1em;text-transform:uppercase;letter-spacing:.05em;margin:0 0 .5em}" +
      ".rec-related ul{list-style:none;margin:0;padding:0}" +
      ".rec-related li{padding:.4em 0;border-bottom:1px solid #ddd}" +
      ".rec-related a{color:#0b4f8a;text-decoration:none;font-weight:600}" +
      ".rec-related a:hover,.rec-related a:focus{text-decoration:underline}" +
      ".rec-related time{display:block;color:#555;font-size:.85em}";
    document.head.appendChild(s);
  }

  function safeHref(url) {
    if (!url) return null;
    try {
      var u = new URL(url, location.href);
      return u.protocol === "http:" || u.protocol === "https:" ? u.href : null;
    } catch (e) {
      return null;
    }
  }

  function fallbackHeading(items) {
    // "More from Politics" when every filler item is of one section, else "Latest".
    var first = items[0].section;
    var one = first && items.every(function (i) { return i.section === first; });
    return one ? "More from " + first : "Latest";
  }

  function render(el, data) {
    var nav = document.createElement("nav");
    nav.className = "rec-related";
    nav.setAttribute("aria-label", "Related articles");
    var related = data.items.filter(function (i) { return i.source !== "fallback"; });
    var filler = data.items.filter(function (i) { return i.source === "fallback"; });
    if (related.length) section(nav, el.getAttribute("data-title") || "Related articles", related);
    if (filler.length) section(nav, fallbackHeading(filler), filler);
    el.replaceChildren(nav);
  }

  function section(nav, title, items) {
    var h = document.createElement("h2");
    h.textContent = title;
    nav.appendChild(h);
    var ul = document.createElement("ul");
    items.forEach(function (item) {
      var li = document.createElement("li");
      li.setAttribute("data-source", item.source === "manual" || item.source === "fallback" ? item.source : "auto");
      var href = safeHref(item.url);
      var a = document.createElement(href ? "a" : "span");
      if (href) a.href = href;
      a.textContent = item.title || item.id;
      li.appendChild(a);
      if (item.published) {
        var t = document.createElement("time");
        t.dateTime = item.published;
        t.textContent = item.published.slice(0, 10);
        li.appendChild(t);
      }
      ul.appendChild(li);
    });
    nav.appendChild(ul);
  }

  function load(el) {
    var id = el.getAttribute("data-article-id");
    if (!id || el.getAttribute("data-rec-loaded")) return;
    el.setAttribute("data-rec-loaded", "1");
    var k = parseInt(el.getAttribute("data-k") || "5", 10) || 5;
    var url = api + "/v1/articles/" + encodeURIComponent(id) + "/related?k=" + Math.min(Math.max(k, 1), 100);
    ["section", "lang", "since", "until", "fallback", "min_confidence"].forEach(function (f) {
      var v = el.getAttribute("data-" + f);
      if (v) url += "&" + f + "=" + encodeURIComponent(v);
    });
    fetch(url, { credentials: "omit" })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (data) { if (data.items.length) render(el, data); })
      .catch(function () { /* leave the page as it was */ });
  }

  function init() {
    style();
    document.querySelectorAll("[data-article-id]").forEach(load);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
