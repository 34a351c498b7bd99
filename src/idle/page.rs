//! The loading page a browser gets while its guest wakes: small, with no
//! external assets, following the wake over server-sent events.

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page for `route`. `error` is set when the last wake failed: a
/// public reason, never the internal one (DESIGN.md §9).
pub fn loading_page(route: &str, error: Option<&str>) -> String {
    let route = escape_html(route);
    let (heading, status, hidden) = match error {
        Some(e) => (
            "Could not wake",
            format!("could not wake: {}", escape_html(e)),
            "",
        ),
        None => ("Waking", "starting…".to_string(), " hidden"),
    };
    let title = match error {
        Some(_) => format!("Could not wake {route}"),
        None => format!("Waking {route}…"),
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<noscript><meta http-equiv="refresh" content="5"></noscript>
<link rel="icon" href="data:,">
<title>{title}</title>
<style>
body{{font:16px/1.5 system-ui,sans-serif;margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;background:#f4f4f6;color:#222}}
main{{max-width:32rem;padding:2rem;text-align:center}}
h1{{font-size:1.4rem;font-weight:600}}
#status{{color:#555;overflow-wrap:anywhere}}
#steps{{display:inline-block;margin:.5rem auto;padding-left:1.8em;text-align:left}}#steps:empty{{display:none}}
.spin{{width:2rem;height:2rem;margin:1rem auto;border:3px solid #ccc;border-top-color:#555;border-radius:50%;animation:r 1s linear infinite}}
@keyframes r{{to{{transform:rotate(360deg)}}}}
#retry{{font:inherit;padding:.4rem 1.2rem;border-radius:.3rem;border:1px solid #888;background:#fff;cursor:pointer}}
@media (prefers-color-scheme:dark){{body{{background:#1c1c20;color:#eee}}#status{{color:#bbb}}.spin{{border-color:#555;border-top-color:#ddd}}#retry{{background:#333;color:#eee}}}}
</style></head>
<body><main>
<h1><span id="heading">{heading}</span> <span id="route">{route}</span></h1>
<div class="spin" id="spin"></div>
<p id="status">{status}</p>
<ol id="steps"></ol>
<p><button id="retry"{hidden} onclick="location.reload()">Try again</button></p>
<noscript><p>This page reloads every few seconds until the service is up.</p></noscript>
</main>
<script>
(function(){{
  var status=document.getElementById('status'),steps=document.getElementById('steps');
  var retry=document.getElementById('retry'),spin=document.getElementById('spin');
  function step(t){{var li=document.createElement('li');li.textContent=t;steps.appendChild(li);status.textContent=t;}}
  function fail(t){{spin.hidden=true;status.textContent=t;retry.hidden=false;
    document.getElementById('heading').textContent='Could not wake';
    document.title='Could not wake '+document.getElementById('route').textContent;}}
  if(!retry.hidden){{spin.hidden=true;return;}}
  var es=new EventSource('/.drowsy/events');
  ['starting','dependency','started','waiting','stopping','stopped'].forEach(function(name){{
    es.addEventListener(name,function(e){{step(JSON.parse(e.data).message);}});
  }});
  es.addEventListener('ready',function(e){{step(JSON.parse(e.data).message);es.close();location.reload();}});
  es.addEventListener('error',function(e){{
    if(e.data){{es.close();fail(JSON.parse(e.data).message);}}
    else{{es.close();setTimeout(function(){{location.reload();}},1000);}}
  }});
}})();
</script>
</body></html>
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape_html(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn page_names_the_route_escaped_and_has_no_external_assets() {
        let page = loading_page("wiki<script>", Some("boom & <b>"));
        assert!(page.contains("Could not wake</span> <span id=\"route\">wiki&lt;script&gt;</span>"));
        assert!(page.contains("<title>Could not wake wiki&lt;script&gt;</title>"));
        assert!(page.contains("could not wake: boom &amp; &lt;b&gt;"));
        assert!(!page.contains("http://") && !page.contains("https://"));
        assert!(page.contains("http-equiv=\"refresh\""));
        let page = loading_page("wiki", None);
        assert!(page.contains("<title>Waking wiki…</title>"));
        assert!(page.contains(">Waking</span> <span id=\"route\">wiki</span>"));
        // No /favicon.ico request to hold while the guest wakes.
        assert!(page.contains("<link rel=\"icon\" href=\"data:,\">"));
    }
}
