/* cxr-localization results pages (index.html and every detail page). Offline, from file://.
 *
 * The cards are data, not HTML: gallery-data.js sets window.CXR_GALLERY = {columns, rows, ...},
 * one row per image. Filters and sort act on ALL rows; only the current page's cards are built
 * (so only their pictures load). The state lives in the URL hash, e.g.
 *   index.html#outcome=FN,FP&boxes=with&q=0015&sort=p-asc&page=2
 * so Back, a reload or a copied link shows the same cards. A model trained with --findings adds
 * (and only then): a "predicted finding" filter (finding=Effusion: p(Effusion) > 0.5), a map
 * per method and finding on the cards (map=grad-cam:Effusion: the image's own picture of that
 * map, or a note saying it has none, never another map), a sort per finding
 * (sort=finding:Effusion) and p_<finding> columns in the CSV. A card's link carries the state
 * (#from=...) to its detail page, whose "gallery" link and previous/next links keep it.
 * Every string from the data reaches the page through textContent or an attribute, never as
 * HTML. */
(function () {
  'use strict';
  var DATA = window.CXR_GALLERY || {columns: [], rows: [], methods: []};
  var COL = {};
  DATA.columns.forEach(function (name, i) { COL[name] = i; });
  var ROWS = DATA.rows;
  var OUTCOMES = ['TP', 'FP', 'FN', 'TN', 'unlabelled'];
  var FINDINGS = DATA.findings || [], FINDING_P = DATA.finding_p === undefined ? 0.5
    : DATA.finding_p;
  var SORTS = ['p-desc', 'p-asc', 'name', 'name-desc'].concat(FINDINGS.map(function (f) {
    return 'finding:' + f;
  }));
  var MAPS = DATA.methods.slice();
  DATA.methods.forEach(function (m) {
    FINDINGS.forEach(function (f) { MAPS.push(m + ':' + f); });
  });
  var SIZES = ['24', '48', '96', '192'];
  var DEFAULTS = {outcome: '', boxes: 'any', pointing: 'any', q: '', view: '', modality: '',
                  finding: '', pmin: '', pmax: '', sort: 'p-desc', map: DATA.methods[0] || '',
                  size: '48', page: '1'};
  var CHOICES = {boxes: ['any', 'with', 'without'], pointing: ['any', 'hit', 'miss'],
                 sort: SORTS, size: SIZES, map: MAPS, finding: [''].concat(FINDINGS)};
  var SELECTS = ['boxes', 'pointing', 'view', 'modality', 'finding', 'sort', 'map', 'size'];

  // ------------------------------------------------------------------ state <-> URL hash
  function parseState(text) {
    var params = new URLSearchParams(text || '');
    var state = {};
    Object.keys(DEFAULTS).forEach(function (key) {
      var value = params.get(key);
      state[key] = value === null ? DEFAULTS[key] : value;
      if (CHOICES[key] && CHOICES[key].indexOf(state[key]) < 0) state[key] = DEFAULTS[key];
    });
    // 'none' = every outcome unticked: an explicit filter that matches nothing
    state.outcome = state.outcome.split(',').filter(function (o) {
      return OUTCOMES.indexOf(o) >= 0 || o === 'none';
    }).join(',');
    if (!/^[1-9][0-9]*$/.test(state.page)) state.page = '1';
    ['pmin', 'pmax'].forEach(function (key) {
      if (state[key] !== '' && !isFinite(parseFloat(state[key]))) state[key] = '';
    });
    return state;
  }

  function stateText(state) {
    var params = new URLSearchParams();
    Object.keys(DEFAULTS).forEach(function (key) {
      if (state[key] !== DEFAULTS[key]) params.set(key, state[key]);
    });
    return params.toString();
  }

  function hashOf(url) {
    var at = url.indexOf('#');
    return at < 0 ? '' : url.slice(at + 1);
  }

  // ------------------------------------------------------------------ the map on the cards
  /* The state's map: {method: index, finding: index or -1 (the method's own map)}. */
  function mapOf(state) {
    var at = state.map.indexOf(':');
    var method = at < 0 ? state.map : state.map.slice(0, at);
    return {method: Math.max(0, DATA.methods.indexOf(method)),
            finding: at < 0 ? -1 : FINDINGS.indexOf(state.map.slice(at + 1))};
  }

  /* A row's picture and pointing (1 hit, 0 miss, null unscored) of that map; picture '' when
   * the image has no such map. */
  function shownMap(row, map) {
    if (map.finding < 0) {
      return {picture: row[COL.pictures][map.method], hit: row[COL.pointing][map.method]};
    }
    var maps = row[COL.finding_maps];
    for (var i = 0; i < maps.length; i++) {
      if (maps[i][0] === map.method && maps[i][1] === map.finding) {
        return {picture: maps[i][2], hit: maps[i][3]};
      }
    }
    return {picture: '', hit: null};
  }

  function findingP(row, finding) {
    var p = row[COL.findings][finding];
    return p === null || p === undefined ? -Infinity : p;
  }

  /* p as the Python side's format_p: as few digits as keep it on its side of the threshold
   * and off 0 and 1. */
  function formatP(p, threshold) {
    for (var digits = 2; digits < 8; digits++) {
      var text = p.toFixed(digits), shown = parseFloat(text);
      if ((shown > threshold) === (p > threshold) && (shown === threshold) === (p === threshold)
          && (shown === 0 || shown === 1) === (p === 0 || p === 1)) return text;
    }
    return String(p);
  }

  // ------------------------------------------------------------------ filter and sort
  function matcher(state) {
    var wanted = state.outcome ? state.outcome.split(',') : null;
    var q = state.q.trim().toLowerCase();
    var map = mapOf(state);
    var finding = FINDINGS.indexOf(state.finding);
    var pmin = state.pmin === '' ? -Infinity : parseFloat(state.pmin);
    var pmax = state.pmax === '' ? Infinity : parseFloat(state.pmax);
    return function (row) {
      if (wanted && wanted.indexOf(row[COL.outcome]) < 0) return false;
      var boxed = row[COL.boxes].length > 0;
      if ((state.boxes === 'with' && !boxed) || (state.boxes === 'without' && boxed)) return false;
      if (finding >= 0 && !(findingP(row, finding) > FINDING_P)) return false;
      if (state.pointing !== 'any') {
        var hit = shownMap(row, map).hit;
        if (hit === null || (hit === 1) !== (state.pointing === 'hit')) return false;
      }
      if (state.view && row[COL.view] !== state.view) return false;
      if (state.modality && row[COL.modality] !== state.modality) return false;
      var p = row[COL.p];
      if (p < pmin || p > pmax) return false;
      return !q || row[COL.name].toLowerCase().indexOf(q) >= 0
        || row[COL.source].toLowerCase().indexOf(q) >= 0;
    };
  }

  function byName(a, b) {
    var x = ROWS[a][COL.name], y = ROWS[b][COL.name];
    return x < y ? -1 : x > y ? 1 : a - b;
  }

  var COMPARE = {
    'p-desc': function (a, b) { return ROWS[b][COL.p] - ROWS[a][COL.p] || byName(a, b); },
    'p-asc': function (a, b) { return ROWS[a][COL.p] - ROWS[b][COL.p] || byName(a, b); },
    'name': byName,
    'name-desc': function (a, b) { return byName(b, a); }
  };

  FINDINGS.forEach(function (f, k) {   // p(<finding>), highest first
    COMPARE['finding:' + f] = function (a, b) {
      var x = findingP(ROWS[a], k), y = findingP(ROWS[b], k);
      return x === y ? byName(a, b) : y > x ? 1 : -1;
    };
  });

  /* Row indices matching the state, in its sort order: over ALL rows. */
  function select(state) {
    var keep = matcher(state), found = [];
    for (var i = 0; i < ROWS.length; i++) if (keep(ROWS[i])) found.push(i);
    return found.sort(COMPARE[state.sort]);
  }

  // ------------------------------------------------------------------ DOM helpers
  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function boxNodes(boxes) {
    return boxes.map(function (b) {
      var box = el('div', 'box');
      box.style.left = b[1] + '%'; box.style.top = b[2] + '%';
      box.style.width = b[3] + '%'; box.style.height = b[4] + '%';
      if (b[0]) box.appendChild(el('span', '', b[0]));
      return box;
    });
  }

  function image(src, className, alt) {
    var img = el('img', className);
    img.loading = 'lazy'; img.decoding = 'async'; img.alt = alt; img.src = src;
    return img;
  }

  // ------------------------------------------------------------------ the gallery
  function card(i, state, root, from) {
    var row = ROWS[i], map = mapOf(state), shown = shownMap(row, map);
    var outcome = row[COL.outcome], name = row[COL.name];
    var article = el('article', 'card ' + outcome);
    article.dataset.index = i; article.dataset.name = name; article.dataset.outcome = outcome;
    article.dataset.p = row[COL.p];
    var page = root + row[COL.page] + '#from=' + encodeURIComponent(from);
    var stack = el('a', 'stack');
    stack.href = page;
    stack.appendChild(image(root + row[COL.xray], 'xray', 'X-ray ' + name));
    var method = DATA.methods[map.method], finding = FINDINGS[map.finding];
    if (shown.picture) {
      var picture = image(root + shown.picture, 'map', method + ' map'
                          + (finding ? ' of ' + finding : ''));
      if (finding) picture.dataset.finding = finding;
      stack.appendChild(picture);
    }
    boxNodes(row[COL.boxes]).forEach(function (b) { stack.appendChild(b); });
    article.appendChild(stack);
    if (finding && !shown.picture) {   // never another map under this finding's name
      var p = row[COL.findings][map.finding];
      article.appendChild(el('div', 'no-map', 'no ' + finding + ' map'
                             + (p === null ? '' : ': p ' + formatP(p, FINDING_P))));
    }
    var info = el('div', 'info');
    info.appendChild(el('div', 'name', name));
    var line = el('div');
    var badge = el('span', 'badge ' + outcome, outcome);
    badge.title = DATA.outcomes[outcome] || outcome;
    line.appendChild(badge);
    line.appendChild(document.createTextNode(' p(abnormal) '));
    line.appendChild(el('b', 'p', row[COL.p_text]));
    line.appendChild(document.createTextNode(' \u00b7 true: '));
    var label = row[COL.label] || 'unknown';
    line.appendChild(el('span', label, label));
    if (row[COL.boxes].length) line.appendChild(document.createTextNode(' \u00b7 expert boxes'));
    var hit = shown.hit;
    if (hit !== null) {
      line.appendChild(document.createTextNode(' (pointing: ' + (hit ? 'hit)' : 'miss)')));
    }
    info.appendChild(line);
    var bar = el('div', 'bar'), fill = el('span'), tick = el('i');
    fill.style.width = (100 * row[COL.p]).toFixed(1) + '%';
    tick.style.left = (100 * DATA.threshold).toFixed(1) + '%';
    tick.title = 'threshold: abnormal if p > ' + DATA.threshold;
    bar.appendChild(fill); bar.appendChild(tick);
    info.appendChild(bar);
    if (FINDINGS.length) info.appendChild(findingLine(row));
    var facts = [row[COL.view], row[COL.modality]].filter(Boolean).join(' \u00b7 ');
    if (facts) info.appendChild(el('div', 'meta view', facts));
    if (row[COL.source]) {
      var source = el('div', 'source');
      source.appendChild(el('bdi', '', row[COL.source]));
      source.title = row[COL.source];
      info.appendChild(source);
    }
    var details = el('a', '', 'details');
    details.href = page;
    info.appendChild(details);
    article.appendChild(info);
    return article;
  }

  /* "predicted: Effusion 0.81, Mass 0.62" (p > 0.5, most probable first), or the most
   * probable finding when none is predicted. */
  function findingLine(row) {
    var order = FINDINGS.map(function (f, k) { return k; }).filter(function (k) {
      return row[COL.findings][k] !== null;
    }).sort(function (a, b) { return findingP(row, b) - findingP(row, a); });
    var predicted = order.filter(function (k) { return row[COL.findings][k] > FINDING_P; });
    var line = el('div', 'meta findings', predicted.length ? 'predicted: ' : 'none predicted');
    (predicted.length ? predicted : order.slice(0, 1)).forEach(function (k, n) {
      if (n) line.appendChild(document.createTextNode(', '));
      else if (!predicted.length) line.appendChild(document.createTextNode('; most probable: '));
      var item = el(predicted.length ? 'b' : 'span', '',
                    FINDINGS[k] + ' ' + formatP(row[COL.findings][k], FINDING_P));
      line.appendChild(item);
    });
    return line;
  }

  function setControls(state) {
    document.querySelectorAll('.outcome').forEach(function (box) {
      box.checked = !state.outcome || state.outcome.split(',').indexOf(box.value) >= 0;
    });
    SELECTS.forEach(function (key) {
      var node = document.getElementById(key);
      if (node) node.value = state[key];
    });
    document.getElementById('search').value = state.q;
    document.getElementById('p-min').value = state.pmin;
    document.getElementById('p-max').value = state.pmax;
  }

  function readControls(page) {
    var state = {};
    var boxes = Array.prototype.slice.call(document.querySelectorAll('.outcome'));
    var ticked = boxes.filter(function (b) { return b.checked; }).map(function (b) {
      return b.value;
    });
    // all ticked = no outcome filter; none ticked = nothing shown (an explicit empty filter)
    state.outcome = ticked.length === boxes.length ? '' : (ticked.join(',') || 'none');
    SELECTS.forEach(function (key) {
      var node = document.getElementById(key);
      state[key] = node ? node.value : DEFAULTS[key];
    });
    state.q = document.getElementById('search').value;
    state.pmin = document.getElementById('p-min').value;
    state.pmax = document.getElementById('p-max').value;
    state.page = String(page || 1);
    return state;
  }

  function fmt(n) { return n.toLocaleString('en-US'); }

  function renderGallery(state) {
    var found = select(state);
    var size = parseInt(state.size, 10);
    var pages = Math.max(1, Math.ceil(found.length / size));
    var page = Math.min(parseInt(state.page, 10), pages);
    state.page = String(page);
    var text = stateText(state);
    if (hashOf(location.href) !== text) {
      try {
        history.replaceState(null, '', '#' + text);
      } catch (error) {  // a browser that refuses it for file:// pages
        location.replace('#' + text);
      }
    }
    var grid = document.getElementById('grid');
    var fragment = document.createDocumentFragment();
    found.slice((page - 1) * size, page * size).forEach(function (i) {
      fragment.appendChild(card(i, state, '', text));
    });
    grid.replaceChildren(fragment);
    document.getElementById('empty').classList.toggle('hidden', found.length > 0);
    document.getElementById('match-count').textContent = fmt(found.length);
    var first = found.length ? (page - 1) * size + 1 : 0;
    document.getElementById('range').textContent = found.length
      ? fmt(first) + '\u2013' + fmt(Math.min(page * size, found.length)) : '0';
    document.querySelectorAll('.page-of').forEach(function (node) {
      node.textContent = 'page ' + fmt(page) + ' of ' + fmt(pages);
    });
    document.querySelectorAll('[data-go]').forEach(function (button) {
      var go = button.dataset.go;
      button.disabled = (go === 'first' || go === 'prev') ? page <= 1 : page >= pages;
    });
    return {found: found, page: page, pages: pages};
  }

  function startGallery() {
    var shown = {page: 1, pages: 1};
    function apply(state) { setControls(state); shown = renderGallery(state); }
    function onInput() { shown = renderGallery(readControls(1)); }
    document.querySelectorAll('.controls input, .controls select').forEach(function (node) {
      node.addEventListener('input', onInput);
      node.addEventListener('change', onInput);
    });
    document.querySelectorAll('[data-go]').forEach(function (button) {
      button.addEventListener('click', function () {
        var go = button.dataset.go;
        var target = {first: 1, prev: shown.page - 1, next: shown.page + 1, last: shown.pages}[go];
        shown = renderGallery(readControls(target));
        window.scrollTo(0, document.getElementById('controls').offsetTop);
      });
    });
    document.getElementById('clear-filters').addEventListener('click', function () {
      apply(parseState(''));
    });
    document.getElementById('download').addEventListener('click', function () {
      download(readControls(1));
    });
    // Back / forward / a typed hash / a page restored from the back-forward cache
    window.addEventListener('hashchange', function () {
      apply(parseState(hashOf(location.href)));
    });
    window.addEventListener('pageshow', function (event) {
      if (event.persisted) apply(parseState(hashOf(location.href)));
    });
    apply(parseState(hashOf(location.href)));
    document.body.dataset.ready = '1';
    if (window.performance && performance.mark) performance.mark('cxr-cards-ready');
  }

  // ------------------------------------------------------------------ a detail page
  function startDetail() {
    var body = document.body, root = body.dataset.root || '';
    var from = new URLSearchParams(hashOf(location.href)).get('from') || '';
    var back = document.getElementById('back');
    if (back && from) back.href = root + 'index.html#' + from;
    var self = parseInt(body.dataset.index, 10);
    var nav = document.getElementById('card-nav');
    if (nav && ROWS.length && isFinite(self)) {
      var found = select(parseState(from));
      var at = found.indexOf(self);
      if (at >= 0) {
        [['prev', at - 1, '\u2190 previous'], ['next', at + 1, 'next \u2192']].forEach(
          function (step) {
            if (step[1] < 0 || step[1] >= found.length) return;
            var link = el('a', '', step[2]);
            link.id = step[0];
            link.href = root + ROWS[found[step[1]]][COL.page] + '#from=' + encodeURIComponent(from);
            nav.appendChild(link);
            nav.appendChild(document.createTextNode(' '));
          });
        nav.appendChild(document.createTextNode(
          'card ' + fmt(at + 1) + ' of ' + fmt(found.length) + ' in the gallery\'s filter'));
        document.addEventListener('keydown', function (event) {
          var target = document.getElementById(event.key === 'ArrowLeft' ? 'prev'
                                               : event.key === 'ArrowRight' ? 'next' : '');
          if (target && !/INPUT|SELECT/.test(event.target.tagName)) location.href = target.href;
        });
      }
    }
    function update() {
      var opacity = document.getElementById('opacity').value / 100;
      var boxes = document.getElementById('show-boxes').checked;
      document.querySelectorAll('.layer').forEach(function (img) {
        img.style.opacity = opacity;
      });
      document.querySelectorAll('.box').forEach(function (b) {
        b.classList.toggle('hidden', !boxes);
      });
      var peak = document.getElementById('show-peak');
      document.querySelectorAll('.peak').forEach(function (p) {
        p.classList.toggle('hidden', !(peak && peak.checked));
      });
      document.getElementById('opacity-value').textContent = Math.round(opacity * 100) + '%';
    }
    document.querySelectorAll('.controls input').forEach(function (node) {
      node.addEventListener('input', update);
    });
    update();
    body.dataset.ready = '1';
  }

  // ------------------------------------------------------------------ the matching cards as CSV
  // Cells a spreadsheet would run as a formula get a leading apostrophe (as the Python side's
  // scraper.fileio.csv_cell does for index.csv); numbers we write stay numbers.
  var FORMULA = /^[=+\-@\t\r]/, NUMBER = /^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/;

  function csvCell(value) {
    var text = value === null || value === undefined ? '' : String(value);
    if (FORMULA.test(text) && !NUMBER.test(text)) text = "'" + text;
    return /[",\n\r]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }

  function selectionCsv(state) {
    var header = ['name', 'label', 'p_abnormal'].concat(FINDINGS.map(function (f) {
      return 'p_' + f;
    }), ['outcome', 'view', 'modality', 'source', 'expert_boxes'], DATA.methods.map(function (m) {
      return 'pointing_' + m;
    }));
    var lines = [header.map(csvCell).join(',')];
    select(state).forEach(function (i) {
      var row = ROWS[i];
      lines.push([row[COL.name], row[COL.label], row[COL.p]].concat(
        FINDINGS.length ? row[COL.findings] : [],
        [row[COL.outcome], row[COL.view], row[COL.modality], row[COL.source],
         row[COL.boxes].length],
        row[COL.pointing].map(function (hit) {
          return hit === null ? '' : hit ? 'hit' : 'miss';
        })).map(csvCell).join(','));
    });
    return lines.join('\n') + '\n';
  }

  function download(state) {
    var link = el('a');
    link.href = URL.createObjectURL(new Blob([selectionCsv(state)], {type: 'text/csv'}));
    link.download = 'gallery-selection.csv';
    document.body.appendChild(link);
    link.click();
    link.remove();
  }

  window.CXR = {parseState: parseState, stateText: stateText, select: select,
                selectionCsv: selectionCsv};
  if (document.body.dataset.page === 'gallery') startGallery(); else startDetail();
})();
