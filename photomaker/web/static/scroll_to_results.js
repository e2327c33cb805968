() => {
  const el = document.getElementById("results");
  if (!el) return;
  const top = el.getBoundingClientRect().top;
  if (top < 0 || top > window.innerHeight * 0.5) el.scrollIntoView({behavior: "smooth", block: "start"});
}
