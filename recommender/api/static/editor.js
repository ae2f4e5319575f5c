/* The editors' page. Text from the archive is inserted with textContent; the
   only HTML used is the search snippet, which the server escapes before it
   adds <mark> around matched words. */
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }

  function meta(item) {
    return [item.id, item.section, item.published && item.published.slice(0, 10)].filter(Boolean).join(" · ");
  }

  function fail(target, r) {
    return r.json().then(function (body) {
      target.replaceChildren(el("li", "error", body.error ? body.error.message : "request failed"));
    }, function () { target.replaceChildren(el("li", "error", "request failed (" + r.status + ")")); });
  }

  var current = null;

  function writeHeaders() {
    return { "Authorization": "Bearer " + $("api-key").value, "Content-Type": "application/json" };
  }

  function ruleRequest(method, path, body) {
    var status = $("rules-status");
    status.textContent = "Saving…";
    return fetch(path, { method: method, headers: writeHeaders(), body: body ? JSON.stringify(body) : undefined })
      .then(function (r) {
        return r.json().then(function (data) {
          status.textContent = r.ok ? "Saved." : (data.error ? data.error.message : "request failed");
          if (r.ok && current) showRelated(current);
        });
      });
  }

  function showRules(item) {
    var list = $("rules");
    list.replaceChildren();
    if (!$("api-key").value) return;
    fetch("/v1/rules?article=" + encodeURIComponent(item.id), { headers: writeHeaders(), cache: "no-store" }).then(function (r) {
      if (!r.ok) return fail(list, r);
      return r.json().then(function (data) {
        data.rules.forEach(function (rule) {
          var li = el("li", null, rule.kind + " " + rule.target +
            (rule.position ? " at " + rule.position : "") + (rule.weight ? " by " + rule.weight : ""));
          var remove = el("button", "small", "Remove");
          remove.type = "button";
          remove.addEventListener("click", function () { ruleRequest("DELETE", "/v1/rules/" + rule.id); });
          li.appendChild(remove);
          list.appendChild(li);
        });
      });
    });
  }

  $("pin-form").addEventListener("submit", function (event) {
    event.preventDefault();
    if (!current) return;
    ruleRequest("POST", "/v1/rules", { kind: "pin", article: current.id, target: $("pin-target").value.trim(),
                                        position: parseInt($("pin-position").value, 10) });
  });

  function reasonText(reasons) {
    /* the machine-readable reasons, in words: shared names and the days between */
    if (!reasons) return "";
    var parts = [];
    if (reasons.shared && reasons.shared.length) parts.push("shares " + reasons.shared.join(", "));
    if (reasons.days_apart !== undefined) parts.push(reasons.days_apart + " days apart");
    return parts.join(" · ");
  }

  function showRelated(item) {
    var panel = $("related-panel"), list = $("related");
    current = item;
    panel.hidden = false;
    $("related-for").textContent = item.title || item.id;
    list.replaceChildren(el("li", "meta", "Loading…"));
    /* no-store: editors see a rule's effect at once, not the 60 s public cache */
    fetch("/v1/articles/" + encodeURIComponent(item.id) + "/related?k=10", { cache: "no-store" }).then(function (r) {
      if (!r.ok) return fail(list, r);
      return r.json().then(function (data) {
        list.replaceChildren();
        if (!data.items.length) list.appendChild(el("li", "meta", "Nothing in the archive passes the confidence floor."));
        data.items.forEach(function (rel) {
          var li = el("li", rel.source === "manual" || rel.source === "fallback" ? rel.source : "auto");
          li.appendChild(el("span", "related-title", rel.title || rel.id));
          if (rel.source === "manual") li.appendChild(el("span", "badge manual", "pinned"));
          else if (rel.source === "fallback") li.appendChild(el("span", "badge fallback", "fallback"));
          else li.appendChild(el("span", "score", "confidence " + Math.round(100 * rel.confidence) + "%"));
          var block = el("button", "small", "Block here");
          block.type = "button";
          block.title = "Never show this article under " + (item.title || item.id);
          block.addEventListener("click", function () {
            ruleRequest("POST", "/v1/rules", { kind: "block", article: item.id, target: rel.id });
          });
          li.appendChild(block);
          li.appendChild(el("div", "meta", meta(rel)));
          var why = reasonText(rel.reasons);
          if (why) li.appendChild(el("div", "meta reasons", why));
          list.appendChild(li);
        });
        showRules(item);
      });
    });
  }

  $("search-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var params = new URLSearchParams({ q: $("q").value.trim(), k: "20" });
    ["section", "since", "until"].forEach(function (f) { if ($(f).value) params.set(f, $(f).value); });
    var list = $("results");
    $("status").textContent = "Searching…";
    fetch("/v1/search?" + params.toString()).then(function (r) {
      if (!r.ok) { $("status").textContent = ""; return fail(list, r); }
      return r.json().then(function (data) {
        $("status").textContent = data.items.length + " results for “" + data.query + "”";
        list.replaceChildren();
        data.items.forEach(function (item) {
          var li = el("li");
          var button = el("button", "result-title", item.title || item.id);
          button.type = "button";
          button.addEventListener("click", function () { showRelated(item); });
          li.appendChild(button);
          li.appendChild(el("span", "score", item.score.toFixed(2)));
          li.appendChild(el("div", "meta", meta(item)));
          var snippet = el("p", "snippet");
          snippet.innerHTML = item.snippet; /* escaped by the server; only <mark> is markup */
          li.appendChild(snippet);
          list.appendChild(li);
        });
      });
    });
  });
})();
