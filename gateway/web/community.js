// The community page's charts (Apache ECharts), drawn from the day's data that the
// gateway put in <script id="community-data" type="application/json">. The same file
// runs in the demo's report.html, where it and ECharts are inlined.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("community-data").textContent);
  var COLORS = { direct: "#2e8b57", pool: "#3c78b4", gridIn: "#9a9a9a", gridOut: "#f2a900" };
  var charts = {};

  function kwh(wh) {
    var v = wh / 1000;
    return (Math.abs(v) < 10 ? v.toFixed(3) : v.toFixed(2)) + " kWh";
  }

  // whole Wh to kWh with two decimals, rounded half up in integers (no float sums)
  function kwh2(wh) {
    return (Math.floor((wh + 5) / 10) / 100).toFixed(2) + " kWh";
  }

  function init(id) {
    var el = document.getElementById(id);
    if (!el) return null;
    // SVG: crisp when printed or zoomed, and the names drawn are text in the page
    var chart = echarts.init(el, null, { renderer: "svg" });
    window.addEventListener("resize", function () { chart.resize(); });
    // "finished": drawn, animation over (tests and screenshots wait for every chart)
    chart.on("finished", function () { window.wattshareCharts.finished[id] = true; });
    charts[id] = chart;
    return chart;
  }

  // 1. Where the energy went: producers -> chosen beneficiaries, the pool, the grid;
  //    the grid and the pool -> consumers. A member both sends and receives over a day,
  //    so it has a node on each side ("sent" on the left, "received" on the right).
  function sankey() {
    var chart = init("sankey");
    if (!chart) return;
    var nodes = {}, links = [];
    function node(id, title, depth, color) {
      if (!nodes[id]) nodes[id] = { name: id, title: title, depth: depth,
                                    itemStyle: color ? { color: color } : undefined };
      return id;
    }
    data.flows.forEach(function (f) {
      if (f.wh <= 0) return;
      var src, dst;
      if (f.kind === "p2p") { src = node("out:" + f.from, f.from, 0); dst = node("in:" + f.to, f.to, 2); }
      else if (f.kind === "pool_in") { src = node("out:" + f.from, f.from, 0); dst = node("pool", f.to, 1, COLORS.pool); }
      else if (f.kind === "pool_out") { src = node("pool", f.from, 1, COLORS.pool); dst = node("in:" + f.to, f.to, 2); }
      else if (f.kind === "grid_export") { src = node("out:" + f.from, f.from, 0); dst = node("grid:out", "grid (feed-in)", 2, COLORS.gridOut); }
      else { src = node("grid:in", "grid (supply)", 0, COLORS.gridIn); dst = node("in:" + f.to, f.to, 2); }
      links.push({ source: src, target: dst, value: f.wh / 1000, wh: f.wh, kind: f.kind,
                   tokens: f.text.tokens });
    });
    // a node's energy: what flows out of it, or into it for the right-hand column
    links.forEach(function (l) {
      nodes[l.source].out = (nodes[l.source].out || 0) + l.wh;
      nodes[l.target].in = (nodes[l.target].in || 0) + l.wh;
    });
    Object.keys(nodes).forEach(function (k) {
      nodes[k].wh = Math.max(nodes[k].out || 0, nodes[k].in || 0);
    });
    chart.setOption({
      aria: { enabled: true },
      tooltip: {
        trigger: "item",
        formatter: function (p) {
          if (p.dataType === "edge") {
            var d = p.data, from = nodes[d.source].title, to = nodes[d.target].title;
            return from + " \u2192 " + to + ": " + kwh(d.wh) +
              (d.kind === "grid_import" || d.kind === "grid_export" ? "" : " (" + d.tokens + ")");
          }
          return p.data.title + ": " + kwh(p.data.wh);
        }
      },
      series: [{
        type: "sankey", left: 10, right: 20, top: 20, bottom: 20, nodeGap: 12,
        // the right column's names go inside the chart, left of their nodes
        levels: [{ depth: 2, label: { position: "left" } }],
        emphasis: { focus: "adjacency" }, nodeAlign: "justify", draggable: false,
        data: Object.keys(nodes).map(function (k) { return nodes[k]; }),
        links: links,
        lineStyle: { color: "gradient", opacity: 0.45, curveness: 0.5 },
        label: { formatter: function (p) { return p.data.title + "  " + kwh2(p.data.wh); } }
      }]
    });
  }

  // 2. The day, interval by interval: how the community's consumption was supplied
  //    (up) and what went out to the grid (down).
  function timeline() {
    var chart = init("timeline");
    if (!chart) return;
    var rows = data.intervals.filter(function (r) { return r.state === "settled"; });
    var x = rows.map(function (r) { return r.label.split("-")[0]; });
    function series(name, key, color, sign) {
      return { name: name, type: "bar", stack: sign > 0 ? "in" : "out", barCategoryGap: "10%",
               itemStyle: { color: color },
               data: rows.map(function (r) { return sign * (r[key] || 0) / 1000; }) };
    }
    chart.setOption({
      aria: { enabled: true },
      legend: { top: 0 },
      grid: { left: 60, right: 20, top: 40, bottom: 50 },
      tooltip: { trigger: "axis", valueFormatter: function (v) { return Math.abs(v).toFixed(3) + " kWh"; } },
      xAxis: { type: "category", data: x, name: "local time (" + data.community.timezone + ")",
               nameLocation: "middle", nameGap: 30 },
      yAxis: { type: "value", name: "kWh per interval",
               axisLabel: { formatter: function (v) { return Math.abs(v); } } },
      series: [
        series("shared directly", "direct_wh", COLORS.direct, 1),
        series("from the community pool", "pool_wh", COLORS.pool, 1),
        series("from the grid", "grid_import_wh", COLORS.gridIn, 1),
        series("to the grid", "grid_export_wh", COLORS.gridOut, -1)
      ]
    });
  }

  // 3. Each member's day: what it received (from neighbours, from the grid) and what it
  //    sent (to neighbours, to the grid).
  function members() {
    var chart = init("members-chart");
    if (!chart) return;
    var ms = data.members;
    var names = ms.map(function (m) { return m.name; });
    function s(name, fn, color, stack) {
      return { name: name, type: "bar", stack: stack, itemStyle: { color: color },
               data: ms.map(function (m) { return fn(m) / 1000; }) };
    }
    chart.setOption({
      aria: { enabled: true },
      legend: { top: 0 },
      grid: { left: 170, right: 30, top: 40, bottom: 30 },
      tooltip: { trigger: "axis", axisPointer: { type: "shadow" },
                 valueFormatter: function (v) { return Math.abs(v).toFixed(3) + " kWh"; } },
      xAxis: { type: "value", name: "kWh", axisLabel: { formatter: function (v) { return Math.abs(v); } } },
      yAxis: { type: "category", data: names, inverse: true },
      series: [
        s("received from neighbours", function (m) { return m.p2p_received_wh; }, COLORS.direct, "used"),
        s("from the grid", function (m) { return m.grid_import_wh; }, COLORS.gridIn, "used"),
        s("shared with neighbours", function (m) { return -m.p2p_sent_wh; }, COLORS.pool, "sent"),
        s("to the grid", function (m) { return -m.grid_export_wh; }, COLORS.gridOut, "sent")
      ]
    });
  }

  window.wattshareCharts = { ready: false, charts: charts, error: null, finished: {} };
  try {
    sankey();
    timeline();
    members();
    window.wattshareCharts.ready = true;
  } catch (e) {
    window.wattshareCharts.error = String(e);
    throw e;
  }
})();
