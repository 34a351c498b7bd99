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

/// What the loading page shows.
#[derive(Clone, Debug, Default)]
pub struct Loading<'a> {
    pub route: &'a str,
    /// The last wake failed, with this reason.
    pub error: Option<&'a str>,
    /// The median of this route's past wakes ("usually ready in about 8 s").
    pub usual_ms: Option<u64>,
    /// How long the wake under way has run so far.
    pub elapsed_ms: u64,
    /// `false` for a client that may not wake the guest (wake rules): the
    /// page says the service is asleep, and neither starts nor follows a
    /// wake.
    pub asleep_only: bool,
    /// With `asleep_only`: how often the page looks again (seconds; 30
    /// when 0).
    pub refresh_secs: u32,
    /// With `asleep_only`, inside an `asleep` window: when it ends.
    pub until: Option<&'a str>,
}

/// The page for `route`. `error` is set when the last wake failed.
pub fn loading_page(route: &str, error: Option<&str>) -> String {
    render(&Loading {
        route,
        error,
        ..Loading::default()
    })
}

pub fn render(l: &Loading) -> String {
    let route = escape_html(l.route);
    let (heading, status, hidden) = match (l.error, l.asleep_only) {
        (_, true) => (
            "Asleep:",
            match l.until {
                Some(at) => format!("This service sleeps until {}.", escape_html(at)),
                None => "This service is asleep and will be back once it is woken.".to_string(),
            },
            " hidden",
        ),
        (Some(e), false) => (
            "Could not wake",
            format!("could not wake: {}", escape_html(e)),
            "",
        ),
        (None, false) => ("Waking", "starting…".to_string(), " hidden"),
    };
    let title = match (l.error, l.asleep_only) {
        (_, true) => format!("{route} is asleep"),
        (Some(_), false) => format!("Could not wake {route}"),
        (None, false) => format!("Waking {route}…"),
    };
    let usual = l
        .usual_ms
        .map(|ms| escape_html(&super::history::usually_ready(ms)))
        .unwrap_or_default();
    // Without JavaScript: reload now and then; a page that may not wake
    // anything reloads for everyone, and slowly.
    let refresh = if l.asleep_only {
        let secs = if l.refresh_secs == 0 {
            30
        } else {
            l.refresh_secs
        };
        format!(r#"<meta http-equiv="refresh" content="{secs}">"#)
    } else {
        r#"<noscript><meta http-equiv="refresh" content="5"></noscript>"#.to_string()
    };
    let mode = if l.asleep_only { "asleep" } else { "wake" };
    let spin = if l.asleep_only { " hidden" } else { "" };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
{refresh}
<link rel="icon" href="data:,">
<title>{title}</title>
<style>
body{{font:16px/1.5 system-ui,sans-serif;margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;background:#f4f4f6;color:#222}}
main{{max-width:32rem;padding:2rem;text-align:center}}
h1{{font-size:1.4rem;font-weight:600}}
#status{{color:#555;overflow-wrap:anywhere}}
#timing{{color:#777;font-size:.9rem;margin:.2rem 0}}#timing:empty{{display:none}}
#steps{{display:inline-block;margin:.5rem auto;padding-left:1.8em;text-align:left}}#steps:empty{{display:none}}
.spin{{width:2rem;height:2rem;margin:1rem auto;border:3px solid #ccc;border-top-color:#555;border-radius:50%;animation:r 1s linear infinite}}
@keyframes r{{to{{transform:rotate(360deg)}}}}
#retry{{font:inherit;padding:.4rem 1.2rem;border-radius:.3rem;border:1px solid #888;background:#fff;cursor:pointer}}
@media (prefers-color-scheme:dark){{body{{background:#1c1c20;color:#eee}}#status{{color:#bbb}}#timing{{color:#a0a0a0}}.spin{{border-color:#555;border-top-color:#ddd}}#retry{{background:#333;color:#eee}}}}
</style></head>
<body><main data-mode="{mode}" data-elapsed-ms="{elapsed}" data-usual="{usual}">
<h1><span id="heading">{heading}</span> <span id="route">{route}</span></h1>
<div class="spin" id="spin"{spin}></div>
<p id="status">{status}</p>
<p id="timing">{usual}</p>
<ol id="steps"></ol>
<p><button id="retry"{hidden} onclick="location.reload()">Try again</button></p>
<noscript><p>This page reloads every few seconds until the service is up.</p></noscript>
</main>
<script>
(function(){{
  var main=document.querySelector('main');
  if(main.getAttribute('data-mode')!=='wake')return;
  var status=document.getElementById('status'),steps=document.getElementById('steps');
  var retry=document.getElementById('retry'),spin=document.getElementById('spin');
  var timing=document.getElementById('timing'),usual=main.getAttribute('data-usual');
  var since=Date.now()-Number(main.getAttribute('data-elapsed-ms')||0),timer;
  function showTime(){{var s=Math.floor((Date.now()-since)/1000);timing.textContent=s+' s so far'+(usual?' · '+usual:'');}}
  function step(t){{var li=document.createElement('li');li.textContent=t;steps.appendChild(li);status.textContent=t;}}
  function fail(t){{spin.hidden=true;status.textContent=t;retry.hidden=false;clearInterval(timer);
    document.getElementById('heading').textContent='Could not wake';
    document.title='Could not wake '+document.getElementById('route').textContent;}}
  if(!retry.hidden){{spin.hidden=true;return;}}
  showTime();timer=setInterval(showTime,1000);
  var es=new EventSource('/.drowsy/events');
  ['node','locked','starting','dependency','started','waiting','stopping','stopped'].forEach(function(name){{
    es.addEventListener(name,function(e){{step(JSON.parse(e.data).message);}});
  }});
  es.addEventListener('ready',function(e){{step(JSON.parse(e.data).message);clearInterval(timer);es.close();location.reload();}});
  es.addEventListener('error',function(e){{
    if(e.data){{es.close();fail(JSON.parse(e.data).message);}}
    else{{es.close();setTimeout(function(){{location.reload();}},1000);}}
  }});
}})();
</script>
</body></html>
"#,
        elapsed = l.elapsed_ms,
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

    #[test]
    fn the_page_tells_how_long_wakes_usually_take() {
        let page = render(&Loading {
            route: "wiki",
            usual_ms: Some(7600),
            elapsed_ms: 1234,
            ..Loading::default()
        });
        assert!(
            page.contains("<p id=\"timing\">usually ready in about 8 s</p>"),
            "{page}"
        );
        assert!(page.contains("data-elapsed-ms=\"1234\""));
        assert!(page.contains("data-mode=\"wake\""));
        let page = loading_page("wiki", None);
        assert!(
            page.contains("<p id=\"timing\"></p>"),
            "no estimate without past wakes"
        );
    }

    // The hook for clients that may not wake the guest: "asleep", no
    // wake, no event stream, a slow refresh for everyone.
    #[test]
    fn a_client_that_may_not_wake_sees_asleep() {
        let page = render(&Loading {
            route: "wiki<x>",
            asleep_only: true,
            usual_ms: Some(3000),
            ..Loading::default()
        });
        assert!(
            page.contains("<title>wiki&lt;x&gt; is asleep</title>"),
            "{page}"
        );
        assert!(page.contains(">Asleep:</span>") && !page.contains("Waking"));
        assert!(page.contains("data-mode=\"asleep\""));
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"30\">"));
        assert!(page.contains("class=\"spin\" id=\"spin\" hidden"));
    }
}
