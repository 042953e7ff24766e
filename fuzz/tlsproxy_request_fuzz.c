/*++
/* NAME
/*	tlsproxy_request_fuzz 1
/* SUMMARY
/*	libFuzzer target for a complete tlsproxy(8) client request
/* SYNOPSIS
/*	tlsproxy_request [libFuzzer options] [corpus directory or input file...]
/* DESCRIPTION
/*	This program feeds each input to the same sequence of
/*	deserializers as tlsp_get_request_event() in tlsproxy(8) runs
/*	on a new request: attr_scan() (the null-terminated attr_scan0()
/*	encoding) with ATTR_FLAG_STRICT of the request attributes
/*	(remote endpoint, flags, timeouts, server id), then, for a
/*	client-role request, one attr_scan() with three RECV_ATTR_FUNC()
/*	calls: tls_proxy_client_param_scan(), tls_proxy_client_init_scan()
/*	and tls_proxy_client_start_scan(). As tlsp_client_init() does
/*	next, it serializes the received TLS_CLIENT_PARAMS and
/*	TLS_CLIENT_INIT_PROPS with attr_print_plain() to compute the
/*	TLS engine cache key.
/*
/*	Everything is then destroyed as tlsp_state_free() does, so
/*	that LeakSanitizer reports any memory that a partial request
/*	leaks.
/* SEE ALSO
/*	fuzz_common(3), libFuzzer support
/*	tls_proxy(3), TLS proxy protocol support
/* LICENSE
/* .ad
/* .fi
/*	The Secure Mailer license must be distributed with this software.
/*--*/

/* System library. */

#include <sys_defs.h>

/* Utility library. */

#include <attr.h>
#include <vstream.h>
#include <vstring.h>

/* TLS library. */

#include <tls.h>
#include <tls_proxy.h>

/* Application-specific. */

#include "fuzz_common.h"

/* LLVMFuzzerTestOneInput - one input */

int     LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static VSTRING *remote_endpt;
    static VSTRING *server_id;
    static VSTRING *param_buf;
    static VSTRING *init_buf;
    TLS_CLIENT_PARAMS *tls_params = 0;
    TLS_CLIENT_INIT_PROPS *init_props = 0;
    TLS_CLIENT_START_PROPS *start_props = 0;
    VSTREAM *fp;
    int     req_flags;
    int     handshake_timeout;
    int     session_timeout;

    fuzz_init();
    if (remote_endpt == 0) {
	remote_endpt = vstring_alloc(10);
	server_id = vstring_alloc(10);
	param_buf = vstring_alloc(100);
	init_buf = vstring_alloc(100);
    }
    fp = fuzz_open(data, size);
    if (attr_scan(fp, ATTR_FLAG_STRICT,
		  RECV_ATTR_STR(TLS_ATTR_REMOTE_ENDPT, remote_endpt),
		  RECV_ATTR_INT(TLS_ATTR_FLAGS, &req_flags),
		  RECV_ATTR_INT(TLS_ATTR_TIMEOUT, &handshake_timeout),
		  RECV_ATTR_INT(TLS_ATTR_TIMEOUT, &session_timeout),
		  RECV_ATTR_STR(TLS_ATTR_SERVERID, server_id),
		  ATTR_TYPE_END) == 5
	&& (req_flags & (TLS_PROXY_FLAG_ROLE_CLIENT | TLS_PROXY_FLAG_ROLE_SERVER))
	== TLS_PROXY_FLAG_ROLE_CLIENT
	&& attr_scan(fp, ATTR_FLAG_STRICT,
		     RECV_ATTR_FUNC(tls_proxy_client_param_scan,
				    (void *) &tls_params),
		     RECV_ATTR_FUNC(tls_proxy_client_init_scan,
				    (void *) &init_props),
		     RECV_ATTR_FUNC(tls_proxy_client_start_scan,
				    (void *) &start_props),
		     ATTR_TYPE_END) == 3) {
	(void) tls_proxy_client_param_serialize(attr_print_plain, param_buf,
						tls_params);
	(void) tls_proxy_client_init_serialize(attr_print_plain, init_buf,
					       init_props);
    }
    fuzz_close(fp);
    if (tls_params)
	tls_proxy_client_param_free(tls_params);
    if (init_props)
	tls_proxy_client_init_free(init_props);
    if (start_props)
	tls_proxy_client_start_free(start_props);
    return (0);
}
