() => {
  // Bring the results into view when a run starts. Where they sit below the form (a phone),
  // scroll to the Generate/Stop row just above them instead, so that Stop stays in reach.
  const results = document.getElementById("results");
  if (!results) return;
  const row = document.getElementById("generate-row");
  const stacked = row && row.getBoundingClientRect().bottom <= results.getBoundingClientRect().top + 1;
  const target = stacked ? row : results;
  const top = target.getBoundingClientRect().top;
  if (top < 0 || top > window.innerHeight * 0.5) target.scrollIntoView({behavior: "smooth", block: "start"});
}
