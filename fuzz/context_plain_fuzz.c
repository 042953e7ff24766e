/*++
/* NAME
/*	context_plain_fuzz 1
/* SUMMARY
/*	libFuzzer target for cached TLS session state in smtp(8)
/* SYNOPSIS
/*	context_plain [libFuzzer options] [corpus directory or input file...]
/* DESCRIPTION
/*	This program feeds each input to the code with which
/*	smtp_session_activate() in smtp(8) reads the endpoint properties
/*	of a connection that it takes from scache(8): attr_scan_plain()
/*	with ATTR_FLAG_NONE, first the TLS level, reuse count, endpoint
/*	features, expiration time and end of the cache period, then,
/*	when the level calls for it, the TLS session state with
/*	tls_proxy_context_scan() and RECV_ATTR_FUNC(). As smtp(8)
/*	does with a cached session, it
/*	then checks the session against TLS policies with
/*	tls_client_session_mismatch(), which parses the "peer_cert_der"
/*	certificate with OpenSSL and checks names against it.
/*
/*	A successfully scanned TLS session state must survive a round
/*	trip through tls_proxy_context_print() in the same encoding
/*	(see fuzz_common(3)). It is destroyed with
/*	tls_proxy_context_free(), so that LeakSanitizer reports any
/*	memory that a scan leaks.
/* SEE ALSO
/*	fuzz_common(3), libFuzzer support
/*	tls_proxy(3), TLS proxy protocol support
/*	tls_client_policy(3), TLS client policy identity
/* LICENSE
/* .ad
/* .fi
/*	The Secure Mailer license must be distributed with this software.
/*--*/

/* System library. */

#include <sys_defs.h>

/* Utility library. */

#include <argv.h>
#include <attr.h>
#include <vstream.h>

/* TLS library. */

#include <tls.h>
#include <tls_proxy.h>

/* Application-specific. */

#include "fuzz_common.h"

 /*
  * The endpoint property names, as in smtp_session.c.
  */
#define SESS_ATTR_TLS_LEVEL	"tls_level"
#define SESS_ATTR_REUSE_COUNT	"reuse_count"
#define SESS_ATTR_ENDP_FEATURES	"endpoint_features"
#define SESS_ATTR_EXPIRE_TIME	"expire_time"
#define SESS_ATTR_CACHE_DEADLINE "cache_deadline"

/* context_free - FUZZ_FREE_FN wrapper */

static void context_free(void *ptr)
{
    tls_proxy_context_free((TLS_SESS_STATE *) ptr);
}

/* check_policies - check the session against policies, as smtp(8) does */

static void check_policies(int cached_level, const TLS_SESS_STATE *tls_context)
{
    static ARGV *names;
    static const char *protocols[] = {
	"", ">=TLSv1.2", "!SSLv2, !SSLv3, !TLSv1, !TLSv1.1", "<=TLSv1.3", 0,
    };
    const char **cpp;
    ARGV   *peer_names;

    if (names == 0)
	names = argv_alloc(3);
    argv_truncate(names, 0);
    argv_add(names, "mx.example.com", ".example.net", "example.org",
	     ARGV_END);

    /*
     * The levels of the policy and of the cached session must be equal
     * before the session itself is looked at.
     */
    for (cpp = protocols; *cpp; cpp++) {
	(void) tls_client_session_mismatch(cached_level, *cpp, (char *) 0,
					   names, cached_level, tls_context);
	(void) tls_client_session_mismatch(cached_level, *cpp, (char *) 0,
					   (ARGV *) 0, cached_level,
					   tls_context);
    }
    (void) tls_client_session_mismatch(cached_level, "", "dane",
				       names, cached_level, tls_context);
    (void) tls_client_session_mismatch(cached_level == TLS_LEV_SECURE ?
				       TLS_LEV_VERIFY : TLS_LEV_SECURE,
				       "", (char *) 0, names, cached_level,
				       tls_context);

    /*
     * Names from the input itself, as a policy might list them.
     */
    if (tls_context != 0) {
	peer_names = argv_alloc(2);
	argv_add(peer_names, tls_context->peer_CN, tls_context->namaddr,
		 ARGV_END);
	(void) tls_client_session_mismatch(cached_level, "", (char *) 0,
					   peer_names, cached_level,
					   tls_context);
	argv_free(peer_names);
    }
}

/* LLVMFuzzerTestOneInput - one input */

int     LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    TLS_SESS_STATE *tls_context = 0;
    VSTREAM *mp;
    int     cached_level;
    int     reuse_count;
    int     endp_features;
    long    expire_time;
    long    cache_deadline;
    int     ok;

    fuzz_init();

    /*
     * The same sequence as in smtp_session_activate().
     */
    mp = fuzz_open(data, size);
    ok = (attr_scan_plain(mp, ATTR_FLAG_NONE,
			  RECV_ATTR_INT(SESS_ATTR_TLS_LEVEL,
					&cached_level),
			  RECV_ATTR_INT(SESS_ATTR_REUSE_COUNT,
					&reuse_count),
			  RECV_ATTR_INT(SESS_ATTR_ENDP_FEATURES,
					&endp_features),
			  RECV_ATTR_LONG(SESS_ATTR_EXPIRE_TIME,
					 &expire_time),
			  RECV_ATTR_LONG(SESS_ATTR_CACHE_DEADLINE,
					 &cache_deadline),
			  ATTR_TYPE_END) == 5
	  && ((cached_level > TLS_LEV_MAY
	       || (cached_level == TLS_LEV_MAY && vstream_peek(mp) > 0)) == 0
	      || attr_scan_plain(mp, ATTR_FLAG_NONE,
				 RECV_ATTR_FUNC(tls_proxy_context_scan,
						(void *) &tls_context),
				 ATTR_TYPE_END) == 1));
    fuzz_close(mp);

    if (ok) {
	check_policies(cached_level, tls_context);
	if (tls_context != 0)
	    fuzz_round_trip("tls_proxy_context_scan", &fuzz_codec_plain,
			    tls_proxy_context_print, tls_proxy_context_scan,
			    context_free, (void *) tls_context,
			    FUZZ_RT_FLAG_NONE);
    }
    if (tls_context != 0)
	tls_proxy_context_free(tls_context);
    return (0);
}
