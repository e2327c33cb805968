(on) => {
  if (on) setTimeout(() => {
    const pad = document.getElementById("doodle-pad");
    const brush = pad && pad.querySelector('button[aria-label="Brush"]');
    if (brush) brush.click();
  }, 300);
  return on;
}
