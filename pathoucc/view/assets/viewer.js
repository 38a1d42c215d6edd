// pathoucc view: the slide (DZI) with one DZI layer per cluster on top, at the same slide coordinates.
// The URL's hash holds the state: #slide=ID&x=..&y=..&z=..&o=..&hide=1,3 (x, y: level-0 px at the centre of the
// view; z: screen px per level-0 px; o: overlay opacity 0..1; hide: clusters switched off).
(function () {
  "use strict";
  const slides = window.PATHOUCC_SLIDES || [];
  const byId = new Map(slides.map((s) => [s.id, s]));
  const $ = (id) => document.getElementById(id);
  const state = { slide: null, opacity: 0.5, hidden: new Set(), opened: false, times: {} };

  const viewer = OpenSeadragon({
    id: "view", prefixUrl: "assets/openseadragon/images/", drawer: "canvas", imageSmoothingEnabled: false,
    showNavigator: true, navigatorPosition: "TOP_RIGHT", maxZoomPixelRatio: 4, visibilityRatio: 0.2,
    gestureSettingsMouse: { clickToZoom: false }, crossOriginPolicy: false, preload: false,
  });

  function parseHash() {
    const p = new URLSearchParams(location.hash.slice(1));
    const num = (k) => (p.has(k) && isFinite(parseFloat(p.get(k))) ? parseFloat(p.get(k)) : null);
    return {
      slide: p.get("slide"), x: num("x"), y: num("y"), z: num("z"), o: num("o"),
      hide: p.has("hide") ? p.get("hide").split(",").filter((v) => v !== "").map(Number) : null,
    };
  }

  function writeHash() {
    const item = viewer.world.getItemAt(0);
    if (!state.slide || !item || !state.opened) return;
    const c = item.viewportToImageCoordinates(viewer.viewport.getCenter(true));
    const z = item.viewportToImageZoom(viewer.viewport.getZoom(true));
    const p = new URLSearchParams({ slide: state.slide.id, x: c.x.toFixed(0), y: c.y.toFixed(0),
                                    z: z.toPrecision(4), o: String(state.opacity) });
    if (state.hidden.size) p.set("hide", [...state.hidden].sort((a, b) => a - b).join(","));
    history.replaceState(null, "", "#" + p.toString());
  }

  function applyLayers() {
    if (!state.slide) return;
    state.slide.clusters.forEach((c, i) => {
      const item = viewer.world.getItemAt(i + 1);
      if (item) item.setOpacity(state.hidden.has(c.index) ? 0 : state.opacity);
    });
    $("opacity").value = Math.round(state.opacity * 100);
    $("opacity-value").textContent = Math.round(state.opacity * 100) + " %";
    document.querySelectorAll("#legend input").forEach((box) => {
      box.checked = !state.hidden.has(Number(box.dataset.cluster));
    });
  }

  function applyView(h) {
    const item = viewer.world.getItemAt(0);
    if (!item) return;
    if (h.z !== null && h.z > 0) viewer.viewport.zoomTo(item.imageToViewportZoom(h.z), null, true);
    if (h.x !== null && h.y !== null) viewer.viewport.panTo(item.imageToViewportCoordinates(h.x, h.y), true);
  }

  function buildSlideList() {
    const ul = $("slides");
    ul.replaceChildren();
    for (const s of slides) {
      const a = document.createElement("a");
      a.href = "#slide=" + encodeURIComponent(s.id);
      a.textContent = s.name;
      a.dataset.slide = s.id;
      const li = document.createElement("li");
      li.appendChild(a);
      ul.appendChild(li);
    }
  }

  function buildLegend(s) {
    const ul = $("legend");
    ul.replaceChildren();
    for (const c of s.clusters) {
      const box = document.createElement("input");
      box.type = "checkbox";
      box.dataset.cluster = c.index;
      box.checked = !state.hidden.has(c.index);
      box.addEventListener("change", () => {
        if (box.checked) state.hidden.delete(c.index); else state.hidden.add(c.index);
        applyLayers();
        writeHash();
      });
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = c.color;
      const name = document.createElement("span");
      name.textContent = c.name;
      const count = document.createElement("span");
      count.className = "count";
      count.textContent = c.count.toLocaleString("en");
      const label = document.createElement("label");
      label.append(box, swatch, name, count);
      const li = document.createElement("li");
      li.appendChild(label);
      ul.appendChild(li);
    }
  }

  function decode(b64, Type) {
    if (b64 === null) return null;
    const bytes = Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
    return new Type(bytes.buffer);
  }

  // the map and the patches (megabytes for a large slide): fetched once the first view is drawn, or on a click
  function loadPatches(s, then) {
    if (s.data) { if (then) then(); return; }
    if (then) (s.waiting = s.waiting || []).push(then);
    if (s.loading) return;
    s.loading = true;
    const script = document.createElement("script");
    script.src = "data/" + encodeURIComponent(s.id) + "/patches.js";
    script.onload = () => {
      const raw = window.PATHOUCC_PATCHES[s.id];
      s.data = { map: decode(raw.map, Int16Array), coords: decode(raw.coords, Int32Array),
                 cluster: decode(raw.cluster, Int16Array), distance: decode(raw.distance, Float32Array),
                 extent: raw.extent };
      for (const f of s.waiting || []) f();
      s.waiting = [];
    };
    document.head.appendChild(script);
  }

  // what is at level-0 (x, y): the map's cluster there, and the patch covering it whose centre is nearest
  function infoAt(x, y) {
    const s = state.slide;
    const out = { x: Math.floor(x), y: Math.floor(y), cluster: null, patch: null };
    if (!s || !s.data) return out;
    const col = Math.floor(x / s.cell), row = Math.floor(y / s.cell);
    if (col >= 0 && row >= 0 && col < s.map_width && row < s.map_height) {
      const v = s.data.map[row * s.map_width + col];
      if (v >= 0) out.cluster = v;
    }
    const { coords, extent } = s.data;
    let best = -1, bestD = Infinity;
    for (let i = 0; i < coords.length / 2; i++) {
      const px = coords[2 * i], py = coords[2 * i + 1];
      if (x < px || y < py || x >= px + extent || y >= py + extent) continue;
      const d = (x - px - extent / 2) ** 2 + (y - py - extent / 2) ** 2;
      if (d < bestD) { bestD = d; best = i; }
    }
    if (best >= 0) {
      out.patch = { index: best, x: coords[2 * best], y: coords[2 * best + 1], cluster: s.data.cluster[best],
                    distance: s.data.distance ? s.data.distance[best] : null };
    }
    return out;
  }

  function showInfo(info) {
    const s = state.slide;
    const rows = [["level 0", `x ${info.x}, y ${info.y} px`]];
    rows.push(["map", info.cluster === null ? "no patch" : s.clusters[info.cluster].name]);
    if (info.patch) {
      const p = info.patch;
      rows.push(["patch", `${s.clusters[p.cluster].name} (#${p.index})`]);
      rows.push(["top-left", `x ${p.x}, y ${p.y} px`]);
      if (p.distance !== null) rows.push(["distance to centre", p.distance.toFixed(4)]);
    }
    const dl = $("info");
    dl.replaceChildren();
    for (const [k, v] of rows) {
      const dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = k;
      dd.textContent = v;
      dl.append(dt, dd);
    }
  }

  function updateScaleBar() {
    const item = viewer.world.getItemAt(0);
    const bar = $("scalebar");
    if (!item || !state.slide || !state.slide.mpp) { bar.style.display = "none"; return; }
    const umPerPx = state.slide.mpp / item.viewportToImageZoom(viewer.viewport.getZoom(true));
    let len = 1e-3;
    for (let e = -3; e < 9; e++) {
      for (const m of [1, 2, 5]) {
        const v = m * 10 ** e;
        if (v / umPerPx <= 160) len = v;
      }
    }
    bar.style.display = "";
    $("scalebar-bar").style.width = (len / umPerPx).toFixed(1) + "px";
    $("scalebar-label").textContent = len >= 1000 ? `${+(len / 1000).toPrecision(3)} mm` : `${+len.toPrecision(3)} µm`;
  }

  function open(s, h) {
    state.slide = s;
    state.opened = false;
    state.pending = h;
    state.times = { start: performance.now() };
    if (h.o !== null) state.opacity = Math.min(1, Math.max(0, h.o));
    state.hidden = new Set(h.hide || []);
    document.title = s.name + " — pathoucc view";
    document.querySelectorAll("#slides a").forEach((a) => a.classList.toggle("current", a.dataset.slide === s.id));
    buildLegend(s);
    const width = (s.map_width * s.cell) / s.width;
    viewer.open([{ tileSource: s.tiles },
                 ...s.clusters.map((c) => ({ tileSource: c.tiles, x: 0, y: 0, width: width,
                                             opacity: state.hidden.has(c.index) ? 0 : state.opacity }))]);
  }

  function route() {
    const h = parseHash();
    const s = byId.get(h.slide) || slides[0];
    if (!s) return;
    if (state.slide !== s) open(s, h);
    else {
      if (h.o !== null) state.opacity = h.o;
      if (h.hide) state.hidden = new Set(h.hide);
      applyLayers();
      applyView(h);
    }
  }

  viewer.addHandler("open", () => {
    state.opened = true;
    applyView(state.pending || {});
    applyLayers();
    updateScaleBar();
  });
  viewer.addHandler("tile-drawn", () => {
    if (state.times.firstTile === undefined) state.times.firstTile = performance.now();
  });
  viewer.addHandler("update-viewport", () => {
    updateScaleBar();
    if (state.times.loaded === undefined && ready()) {
      state.times.loaded = performance.now();
      loadPatches(state.slide);
    }
  });
  viewer.addHandler("animation-finish", writeHash);
  viewer.addHandler("canvas-click", (e) => {
    if (!e.quick || !state.opened) return;
    const item = viewer.world.getItemAt(0);
    const p = item.viewportToImageCoordinates(viewer.viewport.pointFromPixel(e.position));
    const s = state.slide;
    loadPatches(s, () => { if (state.slide === s) showInfo(infoAt(p.x, p.y)); });
  });
  $("opacity").addEventListener("input", (e) => {
    state.opacity = Number(e.target.value) / 100;
    applyLayers();
    writeHash();
  });
  window.addEventListener("hashchange", route);

  // every shown layer has all the tiles of the current view (and no animation is running)
  function ready() {
    if (!state.opened || viewer.world.getItemCount() !== 1 + state.slide.clusters.length) return false;
    for (let i = 0; i < viewer.world.getItemCount(); i++) {
      const item = viewer.world.getItemAt(i);
      if (item.getOpacity() > 0 && !item.getFullyLoaded()) return false;
    }
    return viewer.viewport.getCenter(true).equals(viewer.viewport.getCenter(false));
  }

  window.pathoucc = { viewer, state, ready, infoAt, patchesLoaded: () => !!(state.slide && state.slide.data) };
  buildSlideList();
  route();
})();
