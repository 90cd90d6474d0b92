/* aidsafe view: the row list, filters, search and row pages of one run (inlined by
   aidsafe/tasks/view.py). The page's state lives in the URL's hash, e.g.
   #q=phishing&status=failed&reason=malformed_output&page=2 or #row=p0, so links, the back
   button and tests all drive it the same way. Row records are gzip chunks decompressed on
   demand; the list reads only the index. */
'use strict';
(function () {
  const META = JSON.parse(document.getElementById('meta').textContent);
  const RPC = META.rows_per_chunk;
  const PAGE = 50;
  const NUMBERS = ['rounds', 'removed', 'tokens', 'latency', 'grade'];
  const started = performance.now();
  let INDEX = null;
  let generation = 0; // a newer render makes an older one stop after its next await

  const errors = document.getElementById('errors');
  function report(message) {
    errors.hidden = false;
    errors.textContent += message + '\n';
  }
  window.addEventListener('error', (e) => report('error: ' + e.message));
  window.addEventListener('unhandledrejection', (e) =>
    report('error: ' + ((e.reason && e.reason.stack) || e.reason)));

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }
  const text = (value) => el('pre', { class: 'text' }, value === null || value === undefined ? '' : String(value));
  const badge = (label, kind) => el('span', { class: 'badge ' + (kind || label) }, label);
  const tags = (ids) => (ids || []).map((id) => el('span', { class: 'tag' }, id));
  const section = (id, title, ...children) =>
    el('section', { id, class: 'part' }, el('h3', {}, title), ...children);

  // --- data: the index, and row records in gzip chunks -------------------------------------

  async function unpack(id) {
    const binary = atob(document.getElementById(id).textContent);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
    return new Response(stream).text();
  }

  const chunks = new Map(); // chunk number -> its lines; the 8 used last are kept
  async function chunkLines(n) {
    let lines = chunks.get(n);
    if (lines === undefined) lines = (await unpack('chunk-' + n)).split('\n');
    chunks.delete(n);
    chunks.set(n, lines);
    if (chunks.size > 8) chunks.delete(chunks.keys().next().value);
    return lines;
  }
  async function record(i) {
    const lines = await chunkLines(Math.floor(i / RPC));
    return JSON.parse(lines[i % RPC]);
  }

  // Full-text search runs over the values of the records, not their keys: in compact JSON an
  // object key is the only string that starts after `{` or `,` and is followed by `:`.
  const KEY = /[{,]"[^"\\]*":/g;
  let searched = { q: null, hits: null };
  async function search(q, mine, progress) {
    if (searched.q === q) return searched.hits;
    const hits = new Uint8Array(INDEX.ids.length);
    const needle = q.toLowerCase();
    for (let n = 0; n < META.chunks; n++) {
      const raw = chunks.has(n) ? chunks.get(n).join('\n') : await unpack('chunk-' + n);
      if (mine !== generation) return null;
      const lines = raw.replace(KEY, ',').replace(/\\n/g, ' ').replace(/\\"/g, '"')
        .toLowerCase().split('\n');
      for (let j = 0; j < lines.length; j++) if (lines[j].includes(needle)) hits[n * RPC + j] = 1;
      progress(n + 1);
    }
    searched = { q, hits };
    return hits;
  }

  // --- state in the hash ---------------------------------------------------------------------

  function readState() {
    const params = new URLSearchParams(location.hash.slice(1));
    const filters = {};
    for (const name of Object.keys(META.labels)) {
      const values = params.getAll(name);
      if (values.length) filters[name] = new Set(values);
    }
    return {
      q: params.get('q') || '',
      row: params.get('row'),
      tab: params.get('tab') || 'rows',
      page: Math.max(1, parseInt(params.get('page') || '1', 10) || 1),
      sort: params.get('sort') || '',
      filters,
    };
  }
  function hashOf(state) {
    const params = new URLSearchParams();
    if (state.tab && state.tab !== 'rows') params.set('tab', state.tab);
    if (state.q) params.set('q', state.q);
    for (const [name, values] of Object.entries(state.filters)) for (const v of values) params.append(name, v);
    if (state.sort) params.set('sort', state.sort);
    if (state.page > 1) params.set('page', String(state.page));
    if (state.row !== null && state.row !== undefined) params.set('row', state.row);
    return '#' + params.toString();
  }
  function go(state) {
    const hash = hashOf(state);
    if (hash === location.hash || (hash === '#' && !location.hash)) render();
    else location.hash = hash;
  }

  // --- the list ------------------------------------------------------------------------------

  // Rows matching the search and every active facet; per facet, the counts of its values among
  // rows matching everything else (so a facet's counts say what ticking a value would give).
  function select(state, hits) {
    const facets = INDEX.facets;
    const active = [];
    for (const [name, values] of Object.entries(state.filters)) {
      const codes = new Set();
      facets[name].values.forEach((v, c) => { if (values.has(v)) codes.add(c); });
      active.push([name, codes]);
    }
    const counts = {};
    for (const name of Object.keys(facets)) counts[name] = new Array(facets[name].values.length).fill(0);
    const matching = [];
    const n = INDEX.ids.length;
    for (let i = 0; i < n; i++) {
      if (hits && !hits[i]) continue;
      let failed = null;
      let misses = 0;
      for (const [name, codes] of active) {
        if (!facets[name].rows[i].some((c) => codes.has(c))) {
          failed = name;
          if (++misses > 1) break;
        }
      }
      if (misses === 0) {
        matching.push(i);
        for (const name in facets) for (const c of facets[name].rows[i]) counts[name][c]++;
      } else if (misses === 1) {
        for (const c of facets[failed].rows[i]) counts[failed][c]++;
      }
    }
    if (state.sort) {
      const descending = state.sort.startsWith('-');
      const values = INDEX.numbers[state.sort.replace(/^-/, '')];
      if (values) {
        matching.sort((a, b) => {
          const x = values[a];
          const y = values[b];
          if (x === null) return y === null ? a - b : 1;
          if (y === null) return -1;
          return (descending ? y - x : x - y) || a - b;
        });
      }
    }
    return { matching, counts };
  }

  let shell = null; // the list's persistent parts: the search box keeps its focus while typing
  function listShell() {
    if (shell) return shell;
    let timer = null;
    const input = el('input', {
      type: 'search', id: 'search', placeholder: 'Search every text of every row…',
      'aria-label': 'Search',
      oninput: () => {
        clearTimeout(timer);
        timer = setTimeout(() => go({ ...readState(), q: input.value.trim(), page: 1, row: null }), 300);
      },
    });
    const sort = el('select', {
      id: 'sort', 'aria-label': 'Sort',
      onchange: () => go({ ...readState(), sort: sort.value, page: 1, row: null }),
    },
    el('option', { value: '' }, 'run order'),
    ...NUMBERS.flatMap((n) => [el('option', { value: '-' + n }, n + ' ↓'), el('option', { value: n }, n + ' ↑')]));
    shell = {
      input, sort,
      status: el('span', { id: 'count' }),
      facets: el('aside', { class: 'facets', id: 'facets' }),
      table: el('div', { id: 'list' }),
    };
    shell.root = el('div', { class: 'layout' }, shell.facets,
      el('div', {}, el('div', { class: 'toolbar' }, input, shell.status,
        el('label', {}, 'sort ', sort),
        el('a', { href: '#', id: 'clear' }, 'clear filters')), shell.table));
    return shell;
  }

  async function renderList(state, mine) {
    const view = listShell();
    const app = document.getElementById('app');
    if (app.firstChild !== view.root) app.replaceChildren(view.root);
    if (document.activeElement !== view.input) view.input.value = state.q;
    view.sort.value = state.sort;
    let hits = null;
    if (state.q) {
      const begun = performance.now();
      const cached = searched.q === state.q;
      hits = await search(state.q, mine, (done) => {
        view.status.textContent = `searching… ${Math.round((100 * done) / META.chunks)}%`;
      });
      if (hits === null || mine !== generation) return;
      if (!cached) document.body.dataset.searchMs = String(Math.round(performance.now() - begun));
    }
    const { matching, counts } = select(state, hits);
    view.status.textContent = `${matching.length.toLocaleString('en')} of ${INDEX.ids.length.toLocaleString('en')} rows`;
    view.status.dataset.count = matching.length;
    renderFacets(view.facets, state, counts);
    const pages = Math.max(1, Math.ceil(matching.length / PAGE));
    const page = Math.min(state.page, pages);
    const shown = matching.slice((page - 1) * PAGE, page * PAGE);
    const head = el('tr', {}, el('th', { class: 'num' }, '#'), el('th', {}, 'id'), el('th', {}, 'status'),
      el('th', {}, 'prompt'), ...NUMBERS.map((n) => el('th', { class: 'num' }, n)));
    const body = shown.map((i) => {
      const id = INDEX.ids[i];
      const status = INDEX.facets.status.values[INDEX.facets.status.rows[i][0]];
      const reason = INDEX.facets.reason.rows[i].map((c) => INDEX.facets.reason.values[c]).join(', ');
      return el('tr', { class: 'row', 'data-id': id, 'data-status': status },
        el('td', { class: 'num muted' }, i + 1),
        el('td', {}, el('a', { href: hashOf({ ...state, row: id }) }, id)),
        el('td', {}, badge(status), reason ? ' ' + reason : ''),
        el('td', { class: 'title', title: INDEX.titles[i] }, INDEX.titles[i]),
        ...NUMBERS.map((n) => el('td', { class: 'num' }, INDEX.numbers[n][i] ?? '')));
    });
    const pager = el('div', { class: 'pager' },
      page > 1 ? el('a', { href: hashOf({ ...state, page: page - 1 }), id: 'prev' }, '« previous') : null,
      el('span', {}, `page ${page} of ${pages}`),
      page < pages ? el('a', { href: hashOf({ ...state, page: page + 1 }), id: 'next' }, 'next »') : null);
    view.table.replaceChildren(
      shown.length ? el('table', { class: 'rows' }, el('thead', {}, head), el('tbody', {}, body))
        : el('p', { class: 'muted' }, 'No row matches.'),
      pager);
  }

  function renderFacets(aside, state, counts) {
    const sets = [];
    for (const [name, label] of Object.entries(META.labels)) {
      const facet = INDEX.facets[name];
      if (!facet.values.length) continue;
      const chosen = state.filters[name] || new Set();
      const order = facet.values.map((v, c) => c)
        .sort((a, b) => facet.values[a].localeCompare(facet.values[b], 'en', { numeric: true }));
      sets.push(el('fieldset', { class: 'facet', 'data-facet': name }, el('legend', {}, label),
        order.map((c) => {
          const value = facet.values[c];
          const box = el('input', {
            type: 'checkbox', checked: chosen.has(value), 'data-value': value,
            onchange: () => {
              const now = readState();
              const values = new Set(now.filters[name] || []);
              if (box.checked) values.add(value); else values.delete(value);
              if (values.size) now.filters[name] = values; else delete now.filters[name];
              go({ ...now, page: 1, row: null });
            },
          });
          return el('label', { class: counts[name][c] ? '' : 'empty' }, box, value,
            el('span', { class: 'count' }, counts[name][c]));
        })));
    }
    aside.replaceChildren(...sets);
  }

  // --- a row's page --------------------------------------------------------------------------

  function thoughtList(thoughts, removed) {
    const gone = new Map((removed || []).map((r) => [r.thought, r]));
    return el('ol', { class: 'thoughts' }, thoughts.map((t, n) => {
      const removal = gone.get(n + 1);
      if (!removal) return el('li', {}, t.text, tags(t.policies), t.author ? el('span', { class: 'why' }, ' · ' + t.author) : null);
      return el('li', { class: 'removed', 'data-reason': removal.reason },
        el('s', {}, t.text), tags(t.policies), ' ', badge(removal.reason, 'failed'),
        el('div', { class: 'why' }, removal.explanation));
    }));
  }

  // A word diff (longest common subsequence over words with their trailing space) of two
  // responses: between two common stretches, what went comes first, then what came. Very long
  // texts are shown whole.
  function diff(before, after) {
    const a = before.match(/\S+\s*|\s+/g) || [];
    const b = after.match(/\S+\s*|\s+/g) || [];
    if (a.length * b.length > 4e6) return [el('del', {}, before), ' ', el('ins', {}, after)];
    const m = b.length + 1;
    const table = new Uint32Array((a.length + 1) * m);
    for (let i = a.length - 1; i >= 0; i--) {
      for (let j = b.length - 1; j >= 0; j--) {
        table[i * m + j] = a[i] === b[j] ? table[(i + 1) * m + j + 1] + 1
          : Math.max(table[(i + 1) * m + j], table[i * m + j + 1]);
      }
    }
    const out = [];
    let gone = '';
    let came = '';
    const flush = () => {
      if (gone) out.push(el('del', {}, gone));
      if (came) out.push(el('ins', {}, came));
      gone = '';
      came = '';
    };
    let i = 0;
    let j = 0;
    while (i < a.length || j < b.length) {
      if (i < a.length && j < b.length && a[i] === b[j]) {
        flush();
        out.push(a[i]);
        i++;
        j++;
      } else if (j >= b.length || (i < a.length && table[(i + 1) * m + j] >= table[i * m + j + 1])) {
        gone += a[i++];
      } else {
        came += b[j++];
      }
    }
    flush();
    return out;
  }

  function verdict(v, title) {
    if (!v) return el('p', { class: 'muted' }, (title ? title + ': ' : '') + 'not judged');
    const safe = v.safe === null || v.safe === undefined ? 'unjudged' : v.safe ? 'safe' : 'unsafe';
    return el('div', { class: 'verdict' }, title ? el('b', {}, title + ': ') : null, badge(safe),
      v.severity !== null && v.severity !== undefined ? ` severity ${v.severity}/4` : '',
      v.violated && v.violated.length ? [' violated', tags(v.violated)] : '',
      v.categories && v.categories.length ? [' categories', tags(v.categories)] : '',
      v.rationale ? el('div', { class: 'why' }, v.rationale) : null);
  }

  function splitThink(content) {
    const match = /^\s*<think>([\s\S]*?)<\/think>\s*/.exec(content || '');
    return match ? [match[1].trim(), content.slice(match[0].length)] : ['', content || ''];
  }

  function side(title, content, v) {
    const [cot, answer] = splitThink(content);
    return el('div', { class: 'side' }, el('h4', {}, title), verdict(v, 'verdict'),
      el('div', { class: 'muted' }, 'chain of thought'), text(cot),
      el('div', { class: 'muted' }, 'response'), text(answer));
  }

  function kv(pairs) {
    return el('table', { class: 'kv' }, pairs.filter(([, v]) => v !== undefined && v !== null && v !== '')
      .map(([k, v]) => el('tr', {}, el('th', {}, k), el('td', {}, v instanceof Node ? v : typeof v === 'object' ? JSON.stringify(v) : String(v)))));
  }

  function policyCot(trace) {
    const parts = [];
    const intents = trace.intents || {};
    if ((intents.explicit || []).length || (intents.implicit || []).length) {
      parts.push(section('intents', 'Intents',
        el('div', {}, el('b', {}, 'explicit'), el('ul', {}, (intents.explicit || []).map((x) => el('li', {}, x)))),
        el('div', {}, el('b', {}, 'implicit'), el('ul', {}, (intents.implicit || []).map((x) => el('li', {}, x))))));
    }
    const deliberation = trace.deliberation || { turns: [], rounds: 0, agreed: false };
    const draft = (trace.thoughts || []).filter((t) => t.turn === 0);
    let previous = trace.initial_response || '';
    const items = [el('li', { class: 'turn', 'data-turn': 0, 'data-action': 'draft' },
      el('div', { class: 'turn-head' }, 'Draft · ', draft.length ? draft[0].author : 'drafter'),
      thoughtList(draft), el('div', { class: 'muted' }, 'response'), text(previous))];
    for (const turn of deliberation.turns) {
      let response;
      if (turn.response === null || turn.response === undefined || turn.response === previous) {
        response = el('div', { class: 'muted' }, 'response unchanged');
      } else {
        response = [el('div', { class: 'muted' }, 'response changed'), el('pre', { class: 'text diff' }, diff(previous, turn.response))];
        previous = turn.response;
      }
      items.push(el('li', { class: 'turn', 'data-turn': turn.turn, 'data-action': turn.action },
        el('div', { class: 'turn-head' }, `Turn ${turn.turn} · round ${turn.round} · ${turn.agent} `, badge(turn.action)),
        turn.thoughts.length ? [el('div', { class: 'muted' }, `${turn.thoughts.length} thought(s) added`), thoughtList(turn.thoughts)]
          : el('div', { class: 'muted' }, 'no thoughts added'),
        response));
    }
    const ending = !deliberation.turns.length ? 'no deliberation'
      : deliberation.agreed ? `ended by agreement after ${deliberation.rounds} round(s)`
        : `ended when the budget was spent, after ${deliberation.rounds} round(s)`;
    parts.push(section('deliberation', 'Deliberation', el('p', { class: 'muted' }, ending), el('ol', { class: 'timeline' }, items)));
    const removed = trace.removed || [];
    parts.push(section('refiner', `Refiner: ${removed.length} of ${(trace.thoughts || []).length} thoughts removed`,
      thoughtList(trace.thoughts || [], removed),
      (trace.notes || []).length ? el('ul', { class: 'why' }, trace.notes.map((n) => el('li', {}, n))) : null));
    parts.push(section('final', 'Final chain of thought and response',
      thoughtList(trace.final_cot || []), el('div', { class: 'muted' }, 'response'), text(trace.response)));
    return parts;
  }

  function unsafeChain(trace) {
    const corrections = new Map((trace.corrections || []).map((c) => [c.sample, c]));
    const share = trace.safe_share === null || trace.safe_share === undefined ? 'n/a' : trace.safe_share.toFixed(2);
    const samples = trace.samples.map((s) => {
      const c = corrections.get(s.index);
      return el('div', { class: 'card sample', 'data-sample': s.index },
        el('h4', {}, `Sample ${s.index}`), verdict(s.verdict),
        s.unjudged ? el('div', { class: 'why' }, 'unjudged: ' + JSON.stringify(s.unjudged)) : null,
        s.reasoning ? el('details', {}, el('summary', {}, 'reasoning'), text(s.reasoning)) : null,
        el('div', { class: 'muted' }, 'answer'), text(s.answer),
        c ? el('div', { class: 'correction' }, el('h4', {}, 'Correction ',
          c.kept ? badge('kept') : badge('dropped: ' + c.dropped_reason, 'dropped')),
        thoughtList(c.thoughts || []), el('div', { class: 'muted' }, 'response'), text(c.response), verdict(c.verdict)) : null);
    });
    return [section('samples', `Samples: ${trace.hard ? 'hard' : 'not hard'} prompt, safe share ${share}`,
      el('div', { class: 'cards' }, samples))];
  }

  const PROVENANCE = new Set(['id', 'prompt', 'recipe', 'calls', 'models', 'policy_set', 'tokens', 'latency_s', 'aidsafe_version']);
  function otherFields(trace) {
    const rest = Object.entries(trace).filter(([k]) => !PROVENANCE.has(k));
    return rest.length ? [section('fields', 'Record', kv(rest.map(([k, v]) => [k, typeof v === 'string' ? text(v) : v])))] : [];
  }

  function pairPart(pair) {
    const meta = pair.metadata || {};
    const tries = el('table', { class: 'tries' },
      el('tr', {}, ['#', 'belief', 'targets', 'verdict', 'severity', 'violated', 'rationale'].map((h) => el('th', {}, h))),
      (meta.tries || []).map((t, n) => el('tr', {}, el('td', {}, n + 1), el('td', {}, t.belief), el('td', {}, tags(t.targets)),
        el('td', {}, badge(t.safe ? 'safe' : 'unsafe')), el('td', { class: 'num' }, t.severity), el('td', {}, tags(t.violated)), el('td', {}, t.rationale))));
    return section('pair', `DPO pair (rule: ${meta.pair_rule})`,
      el('div', { class: 'muted' }, 'belief'), text(meta.belief),
      el('div', { class: 'sides' },
        side('chosen', pair.chosen && pair.chosen[0] && pair.chosen[0].content, meta.chosen_verdict),
        side('rejected', pair.rejected && pair.rejected[0] && pair.rejected[0].content, meta.rejected_verdict)),
      meta.faithfulness ? faithfulness(meta.faithfulness) : null,
      el('h4', {}, `Belief tries (${(meta.tries || []).length})`), tries);
  }

  function faithfulness(f) {
    return el('p', {}, `Faithfulness to the policies (grader, 1-5): chosen ${f.chosen && f.chosen.score}, try ${f.try + 1} ${f.rejected && f.rejected.score}`);
  }

  function pairFailure(failure) {
    return section('pair', `No DPO pair: ${failure.reason}`, text(failure.detail),
      verdict(failure.chosen_verdict, 'chosen side'),
      failure.faithfulness ? faithfulness(failure.faithfulness) : null,
      el('h4', {}, `Belief tries (${(failure.tries || []).length})`),
      el('div', { class: 'cards' }, (failure.tries || []).map((t, n) => el('div', { class: 'card' },
        el('h4', {}, `Try ${n + 1}`), el('div', { class: 'muted' }, 'belief'), text(t.belief), tags(t.targets),
        t.thoughts ? thoughtList(t.thoughts) : null, t.response !== undefined ? text(t.response) : null, verdict(t.verdict)))));
  }

  function judgment(j) {
    return section('judgment', 'Judgment', el('div', { class: 'muted' }, `response (judged view: ${j.view || 'n/a'})`), text(j.response),
      verdict(j.safe === null ? null : j, 'verdict'),
      kv([['unjudged', j.unjudged_reason], ['detail', j.detail], ['raw output', j.raw_output && text(j.raw_output)],
        ['group', j.group], ['judge', j.judge]]));
  }

  function failurePart(f) {
    return section('failure', `Failed at ${f.stage}: ${f.reason}`, kv([['detail', f.detail && text(f.detail)],
      ['raw output', f.raw_output && text(f.raw_output)], ['failed at', f.failed_at]]));
  }

  function grades(records) {
    const table = (g) => el('table', {},
      el('tr', {}, el('th', {}, 'metric'), el('th', { class: 'num' }, 'score'), el('th', {}, 'rationale')),
      Object.entries(g.scores || {}).map(([metric, s]) => el('tr', { class: 'grade' }, el('td', {}, metric),
        el('td', { class: 'num' }, s ? s.score : '—'),
        el('td', {}, s ? s.rationale : 'unscored: ' + ((g.unscored || {})[metric] || '')))));
    return section('grades', 'Grades', records.map((g) => el('div', {}, el('h4', {}, g.id),
      g.reason ? el('p', {}, badge('failed'), ' ', g.reason, ' ', g.detail || '') : null, table(g))));
  }

  function callTable(row) {
    const parts = [['generation', (row.trace || row.failure || row.judgment || {}).calls],
      ['pair', row.pair ? row.pair.metadata.calls : row.pair_failure && row.pair_failure.calls],
      ...(row.grades || []).map((g) => ['grade ' + g.id, g.calls])];
    const calls = parts.flatMap(([part, list]) => (list || []).map((c) => [part, c]));
    if (!calls.length) return null;
    const sum = (key) => calls.reduce((total, [, c]) => total + (c[key] || 0), 0);
    return section('calls', `Calls (${calls.length})`, el('table', {},
      el('tr', {}, ['part', 'role', 'stage', 'attempt', 'model', 'input tokens', 'output tokens', 'latency s', 'valid']
        .map((h, n) => el('th', { class: n >= 5 && n < 8 ? 'num' : '' }, h))),
      calls.map(([part, c]) => el('tr', { class: 'call' }, el('td', {}, part), el('td', {}, c.role), el('td', {}, c.stage),
        el('td', { class: 'num' }, c.attempt), el('td', {}, c.model), el('td', { class: 'num' }, c.input_tokens),
        el('td', { class: 'num' }, c.output_tokens), el('td', { class: 'num' }, c.latency_s), el('td', {}, c.ok ? 'yes' : badge('no', 'failed')))),
      el('tr', {}, el('th', {}, 'total'), el('td'), el('td'), el('td'), el('td'), el('th', { class: 'num' }, sum('input_tokens')),
        el('th', { class: 'num' }, sum('output_tokens')), el('th', { class: 'num' }, sum('latency_s').toFixed(3)), el('td'))));
  }

  async function renderRow(state, mine) {
    const app = document.getElementById('app');
    const i = INDEX.position.get(state.row);
    const back = el('a', { href: hashOf({ ...state, row: null }), id: 'back' }, '← back to the list');
    if (i === undefined) {
      app.replaceChildren(el('p', {}, back), el('p', { id: 'missing' }, `No row with id ${state.row}.`));
      return;
    }
    const begun = performance.now();
    const row = await record(i);
    if (mine !== generation) return;
    const { matching } = select(state, state.q ? searched.hits : null);
    const at = matching.indexOf(i);
    const near = (k) => (k >= 0 && k < matching.length ? INDEX.ids[matching[k]] : null);
    const before = at >= 0 ? near(at - 1) : null;
    const after = at >= 0 ? near(at + 1) : null;
    const trace = row.trace;
    const source = trace || row.failure || row.judgment || row.pair_failure || {};
    const prompt = typeof source.prompt === 'string' ? source.prompt : null;
    const parts = [
      el('p', { class: 'nav' }, back,
        before !== null ? [' · ', el('a', { href: hashOf({ ...state, row: before }), id: 'previous-row' }, 'previous')] : null,
        after !== null ? [' · ', el('a', { href: hashOf({ ...state, row: after }), id: 'next-row' }, 'next')] : null),
      el('h2', { id: 'row-id' }, row.id, ' ', badge(row.status), row.reason ? ' ' + row.reason : ''),
      prompt !== null ? section('prompt', 'Prompt', text(prompt)) : null,
      row.failure ? failurePart(row.failure) : null,
    ];
    if (trace) {
      if (trace.deliberation || trace.final_cot) parts.push(...policyCot(trace));
      else if (trace.samples) parts.push(...unsafeChain(trace));
      else parts.push(...otherFields(trace));
    }
    if (row.judgment) parts.push(judgment(row.judgment));
    if (row.pair) parts.push(pairPart(row.pair));
    if (row.pair_failure) parts.push(pairFailure(row.pair_failure));
    if ((row.grades || []).length) parts.push(grades(row.grades));
    parts.push(callTable(row));
    parts.push(el('details', { id: 'raw', class: 'part' }, el('summary', {}, 'The records as stored'),
      text(JSON.stringify(row, null, 2))));
    app.replaceChildren(...parts.filter((part) => part !== null));
    window.scrollTo(0, 0);
    document.body.dataset.rowMs = String(Math.round(performance.now() - begun));
  }

  // --- the page ------------------------------------------------------------------------------

  async function render() {
    const mine = ++generation;
    const state = readState();
    document.body.dataset.state = 'rendering';
    for (const tab of ['rows', 'charts', 'run']) {
      document.getElementById('tab-' + tab).classList.toggle('current', state.tab === tab);
    }
    document.getElementById('app').hidden = state.tab !== 'rows';
    document.getElementById('charts').hidden = state.tab !== 'charts';
    document.getElementById('run').hidden = state.tab !== 'run';
    if (state.tab === 'rows') {
      if (state.row !== null) await renderRow(state, mine);
      else await renderList(state, mine);
    }
    if (mine !== generation) return;
    document.body.dataset.rendered = location.hash; // what tests wait for, with the state
    document.body.dataset.state = 'ready';
    if (!document.body.dataset.firstScreenMs) {
      document.body.dataset.firstScreenMs = String(Math.round(performance.now() - started));
    }
  }

  async function main() {
    const size = META.size;
    document.getElementById('size').textContent = `${META.rows.toLocaleString('en')} rows · ` +
      `${(size / 1e6).toFixed(2)} MB · ${Math.round(size / Math.max(1, META.rows))} bytes per row`;
    document.getElementById('charts').hidden = true;
    document.getElementById('run').hidden = true;
    INDEX = JSON.parse(await unpack('index'));
    INDEX.position = new Map();
    INDEX.ids.forEach((id, i) => { if (!INDEX.position.has(id)) INDEX.position.set(id, i); });
    window.addEventListener('hashchange', render);
    document.addEventListener('click', (event) => {
      if (event.target.id === 'clear') { event.preventDefault(); go({ ...readState(), q: '', filters: {}, page: 1, row: null }); }
    });
    await render();
  }
  main().catch((e) => report('error: ' + (e.stack || e)));
})();
