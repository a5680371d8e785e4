// mapd run report: the mistakes table. Reads the JSON in #mapd-data, renders one page of
// rows at a time and builds an item's details only when its row is opened. Model text is
// only ever set with textContent, never parsed as HTML.
(function () {
  "use strict";
  var PAGE = 50;
  var REASON = {accepted: "accepted", unreviewed: "unreviewed", wrong_answer: "wrong answer",
    low_score: "low score", no_valid_review: "no valid review",
    cut_off: "cut off at max_tokens", not_asked: "not asked"};
  // item layout: [id, question, gold, student answer, student output, used, parts]
  // part layout: [feedback, rationale, extracted, correct, reason, aggregate, reviews, trained]
  // and, when data.cascade, the step of the cascade that asked this teacher (or null)
  var data = JSON.parse(document.getElementById("mapd-data").textContent);
  var teachers = data.teachers, colors = data.colors, items = data.items;
  var $ = function (id) { return document.getElementById(id); };
  var search = $("q"), fTeacher = $("f-teacher"), fDecision = $("f-decision");
  var fReason = $("f-reason"), fCheck = $("f-check"), tbody = $("rows");
  var state = {shown: [], page: 0, open: {}}, haystacks = null;

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function haystack(i) {
    if (!haystacks) haystacks = new Array(items.length);
    if (haystacks[i] === undefined) {
      var it = items[i], parts = [it[0], it[1], it[2], it[3], it[4]];
      it[6].forEach(function (p) {
        if (!p) return;
        parts.push(p[0], p[1], p[2]);
        p[6].forEach(function (r) { parts.push(r[2]); });
      });
      haystacks[i] = parts.join("\n").toLowerCase();
    }
    return haystacks[i];
  }

  function partMatches(p) {
    if (!p) return false;
    var d = fDecision.value, r = fReason.value, c = fCheck.value;
    if (d === "accepted" && p[4] !== "accepted" && p[4] !== "unreviewed") return false;
    if (d === "rejected" && (p[4] === null || p[4] === "accepted" || p[4] === "unreviewed")) return false;
    if (r && p[4] !== r) return false;
    // passed review: accepted, or reviewed above the threshold and then failed the answer check
    if (c === "passed_wrong") return (p[4] === "accepted" || (p[4] === "wrong_answer" && p[5] !== null)) && p[3] === false;
    if (c === "failed_right") return (p[4] === "low_score" || p[4] === "no_valid_review") && p[3] === true;
    return true;
  }

  function itemMatches(i, words) {
    var it = items[i], c = fCheck.value;
    if (c === "used" && it[5] !== true) return false;
    if (c === "dropped" && it[5] !== false) return false;
    var t = fTeacher.value, needPart = t !== "" || fDecision.value || fReason.value ||
      c === "passed_wrong" || c === "failed_right";
    if (needPart) {
      var parts = t === "" ? it[6] : [it[6][teachers.indexOf(t)]];
      if (!parts.some(partMatches)) return false;
    }
    if (words.length) {
      var h = haystack(i);
      for (var w = 0; w < words.length; w++) if (h.indexOf(words[w]) < 0) return false;
    }
    return true;
  }

  function apply(keepPage) {
    var t0 = performance.now();
    var words = search.value.toLowerCase().split(/\s+/).filter(Boolean);
    var shown = [];
    for (var i = 0; i < items.length; i++) if (itemMatches(i, words)) shown.push(i);
    state.shown = shown;
    if (!keepPage) state.page = 0;
    render();
    window.mapdFilterMs = performance.now() - t0;
  }

  function chip(p) {
    if (!p) return el("span", "chip none", "–");
    var reason = p[4] || "pending";
    var text = REASON[reason] || reason;
    if (p[5] !== null && p[5] !== undefined) text += " " + (+p[5]).toFixed(1);
    if (p[8]) text = p[8] + " · " + text;
    var node = el("span", "chip r-" + reason, text);
    node.title = (p[8] ? "cascade step " + p[8] + " · " : "") +
      (p[3] === true ? "answer right" : p[3] === false ? "answer wrong" : "") +
      (p[7] ? " · trained on " + p[7] : "");
    if (p[3] === false) node.appendChild(el("span", "wrong", " ✗"));
    return node;
  }

  // The id may break after its separators (a <wbr>, so a copied id stays whole): ids that
  // share a long prefix wrap to show the part that tells them apart.
  function idCell(id) {
    var td = el("td", "qid");
    td.title = id;
    String(id).split(/(?<=[-_.:|\/])/).forEach(function (part, k) {
      if (k) td.appendChild(document.createElement("wbr"));
      td.appendChild(document.createTextNode(part));
    });
    return td;
  }

  function row(i) {
    var it = items[i], tr = el("tr", "row");
    tr.dataset.i = i;
    tr.appendChild(idCell(it[0]));
    tr.appendChild(el("td", "question", it[1]));
    tr.appendChild(el("td", "ans", it[2]));
    tr.appendChild(el("td", "ans bad", it[3] === null ? "–" : it[3]));
    it[6].forEach(function (p) { var td = el("td"); td.appendChild(chip(p)); tr.appendChild(td); });
    tr.appendChild(el("td", "used " + (it[5] === true ? "yes" : it[5] === false ? "no" : ""),
      it[5] === true ? "kept" : it[5] === false ? "dropped" : "–"));
    tr.addEventListener("click", function () { toggle(i, tr); });
    return tr;
  }

  function render() {
    var pages = Math.max(1, Math.ceil(state.shown.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    var start = state.page * PAGE, slice = state.shown.slice(start, start + PAGE);
    var frag = document.createDocumentFragment();
    slice.forEach(function (i) {
      var tr = row(i);
      frag.appendChild(tr);
      if (state.open[i]) frag.appendChild(detailRow(i, tr));
    });
    tbody.replaceChildren(frag);
    $("count").textContent = state.shown.length
      ? "showing " + (start + 1) + "–" + (start + slice.length) + " of " + state.shown.length +
        (state.shown.length === items.length ? " mistakes" : " matching (" + items.length + " in all)")
      : "no mistakes match";
    $("page").textContent = "page " + (state.page + 1) + " of " + pages;
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
  }

  function toggle(i, tr) {
    var next = tr.nextSibling;
    if (next && next.classList.contains("detail")) {
      next.remove(); tr.classList.remove("open"); delete state.open[i];
    } else {
      tr.after(detailRow(i, tr)); state.open[i] = true;
    }
  }

  function block(title, text, cls) {
    var box = el("div", "block " + (cls || ""));
    box.appendChild(el("div", "block-title", title));
    box.appendChild(el("pre", "", text === null || text === undefined || text === "" ? "(none)" : text));
    return box;
  }

  function teacherCard(t, p) {
    var card = el("div", "card teacher");
    card.style.borderTopColor = colors[t];
    var head = el("div", "card-head");
    head.appendChild(el("strong", "", teachers[t]));
    head.appendChild(chip(p));
    if (p && p[7]) head.appendChild(el("span", "trained", "trained on its " + p[7]));
    card.appendChild(head);
    if (!p) { card.appendChild(el("p", "dim", "nothing from this teacher")); return card; }
    card.appendChild(block("Feedback on the student's answer", p[0]));
    var answer = p[3] === null ? "" : " · answer " + (p[2] === null ? "none" : p[2]) +
      (p[3] ? " ✓ right" : " ✗ wrong");
    card.appendChild(block("Own rationale" + answer, p[1], p[3] === false ? "wrong-answer" : ""));
    var list = el("div", "reviews");
    list.appendChild(el("div", "block-title", p[6].length ? "Peer reviews" : "No peer reviews"));
    p[6].forEach(function (r) {
      var d = el("details", "review");
      var s = el("summary");
      s.appendChild(el("span", "reviewer", teachers[r[0]] || r[0]));
      s.appendChild(el("span", "score s" + (r[1] === null ? "x" : Math.round(r[1])),
        r[1] === null ? "invalid" : String(r[1])));
      d.appendChild(s);
      d.appendChild(el("pre", "", r[2]));
      list.appendChild(d);
    });
    card.appendChild(list);
    return card;
  }

  // "Cascade  mixtral [1 · wrong answer] → gpt-3.5 [2 · low score 2.0] → gemini [3 · accepted 5.0]"
  function cascadePath(parts) {
    var steps = [];
    parts.forEach(function (p, t) { if (p && p[8]) steps.push([p[8], t, p]); });
    steps.sort(function (a, b) { return a[0] - b[0]; });
    var line = el("p", "cascade-path");
    line.appendChild(el("span", "block-title", "Cascade "));
    if (!steps.length) line.appendChild(el("span", "dim", "no teacher asked"));
    steps.forEach(function (s, k) {
      if (k) line.appendChild(el("span", "dim", " → "));
      line.appendChild(el("span", "", teachers[s[1]] + " "));
      line.appendChild(chip(s[2]));
    });
    return line;
  }

  function detailRow(i, tr) {
    var it = items[i], out = el("tr", "detail"), td = el("td");
    tr.classList.add("open");
    td.colSpan = 5 + teachers.length;
    var top = el("div", "detail-top");
    top.appendChild(block("Question · gold answer " + it[2], it[1]));
    top.appendChild(block("Student's answer (" + (it[3] === null ? "none" : it[3]) + ")", it[4], "student"));
    td.appendChild(top);
    if (data.cascade) td.appendChild(cascadePath(it[6]));
    var grid = el("div", "teacher-grid");
    it[6].forEach(function (p, t) { grid.appendChild(teacherCard(t, p)); });
    td.appendChild(grid);
    out.appendChild(td);
    return out;
  }

  function reveal(id) {
    var i = -1;
    for (var k = 0; k < items.length; k++) if (items[k][0] === id) { i = k; break; }
    if (i < 0) return;
    search.value = ""; fTeacher.value = ""; fDecision.value = ""; fReason.value = ""; fCheck.value = "";
    apply();
    state.page = Math.floor(state.shown.indexOf(i) / PAGE);
    state.open = {};
    state.open[i] = true;
    render();
    var tr = tbody.querySelector('tr.row[data-i="' + i + '"]');
    if (tr) { tr.classList.add("flash"); tr.scrollIntoView({block: "center"}); }
  }

  function fromHash() {
    var m = /^#item=(.+)$/.exec(location.hash);
    if (m) reveal(decodeURIComponent(m[1]));
  }

  [search].forEach(function (n) { n.addEventListener("input", function () { apply(); }); });
  [fTeacher, fDecision, fReason, fCheck].forEach(function (n) {
    n.addEventListener("change", function () { apply(); });
  });
  $("prev").addEventListener("click", function () { state.page--; render(); });
  $("next").addEventListener("click", function () { state.page++; render(); });
  document.querySelectorAll("[data-check]").forEach(function (b) {
    b.addEventListener("click", function () {
      fCheck.value = b.dataset.check; apply();
      $("mistakes").scrollIntoView({block: "start"});
    });
  });
  window.addEventListener("hashchange", fromHash);
  apply();
  fromHash();
  window.mapdReadyMs = performance.now();
  window.mapdReady = true;

  // Build the search text of every item in small slices while the page is idle, so that
  // the first keystroke does not pay for it.
  var warmed = 0;
  (function warm() {
    for (var end = Math.min(items.length, warmed + 500); warmed < end; warmed++) haystack(warmed);
    if (warmed < items.length) setTimeout(warm, 0);
    else window.mapdSearchReadyMs = performance.now();
  })();
})();
