() => {
  const el = document.getElementById("photo-view");
  if (el) el.scrollIntoView({behavior: "smooth", block: "start"});
}
