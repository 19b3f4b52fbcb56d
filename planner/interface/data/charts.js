// What the dashboard and the campaign report share about time charts (uPlot, vendored beside this file).

// An x range for times in seconds that reads right at any data size: uPlot's auto range on one timestamp
// spans years (Feb 2027 to Aug 2029 around one snapshot), so a range shorter than `minSpan` seconds is
// widened to `minSpan`, the share `before` of the widening before the data (0.85: the newest point stays
// near the right edge, as on a price chart; 0.5: the data in the middle).
function timeRange(min, max, minSpan, before = 0.85) {
  if (min == null || max == null) return [min, max];
  const span = max - min;
  if (span >= minSpan) return [min, max];
  const pad = minSpan - span;
  return [min - pad * before, max + pad * (1 - before)];
}

// The x scale's range function for uPlot: the data's own first and last time through timeRange. uPlot hands
// a range function min..min+86400/ms for a single timestamp (with times in seconds, 1000 days), so the
// passed bounds cannot be trusted there; the x data is sorted, as uPlot requires.
function timeScale(minSpan, before = 0.85) {
  return (u, min, max) => {
    const x = (u.data && u.data[0]) || [];
    return x.length ? timeRange(x[0], x[x.length - 1], minSpan, before) : [min, max];
  };
}

// Axis values for a time axis in UTC: the date on the first tick and where the day changes, then HH:MM
// (HH:MM:SS when ticks are less than a minute apart).
function utcTicks(u, ticks) {
  let lastDay = null;
  const seconds = ticks.length > 1 && ticks[1] - ticks[0] < 60;
  return ticks.map(t => {
    const iso = new Date(t * 1000).toISOString();
    const day = iso.slice(0, 10), time = iso.slice(11, seconds ? 19 : 16);
    const label = day !== lastDay ? `${day}\n${time}` : time;
    lastDay = day;
    return label;
  });
}
