/*++
/* NAME
/*	seedgen 1
/* SUMMARY
/*	write seed inputs for the tlsproxy(8) protocol fuzz targets
/* SYNOPSIS
/*	seedgen corpus-directory certificate.pem
/* DESCRIPTION
/*	seedgen serializes realistic TLS_CLIENT_PARAMS,
/*	TLS_CLIENT_INIT_PROPS, TLS_CLIENT_START_PROPS (with and without
/*	a TLS_DANE with TLSA records), TLS_SERVER_INIT_PROPS,
/*	TLS_SERVER_START_PROPS and TLS_SESS_STATE (with and without
/*	"peer_cert_der") structures, with the real tls_proxy_*_print()
/*	functions and in the encoding that each fuzz target scans, and
/*	writes each as one file named gen-\fIlabel\fR in the target's
/*	subdirectory of \fIcorpus-directory\fR. Other files there are
/*	left alone.
/*
/*	The server certificate in the TLS_SESS_STATE seeds is the first
/*	certificate in the PEM file \fIcertificate.pem\fR (the test
/*	certificate of tls_client_policy(3), src/tls/tls_client_policy.pem).
/*
/*	The output is deterministic, so that regenerating the seeds
/*	changes nothing unless a printer or an attribute changes.
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
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <sys/stat.h>

/* Utility library. */

#include <msg.h>
#include <msg_vstream.h>
#include <mymalloc.h>
#include <argv.h>
#include <attr.h>
#include <vstream.h>
#include <vstring.h>

/* Global library. */

#include <mail_params.h>

/* TLS library. */

#define TLS_INTERNAL
#include <tls.h>
#include <tls_proxy.h>
#include <openssl/pem.h>

/* Application-specific. */

#include "fuzz_common.h"

static const char *corpus_dir;

/* write_seed - write one serialized object list to a seed file */

static void write_seed(const char *target, const char *label, VSTRING *buf)
{
    VSTRING *path = vstring_alloc(100);
    VSTREAM *fp;

    vstring_sprintf(path, "%s/%s", corpus_dir, target);
    if (mkdir(vstring_str(path), 0755) < 0 && errno != EEXIST)
	msg_fatal("mkdir %s: %m", vstring_str(path));
    vstring_sprintf_append(path, "/gen-%s", label);
    if ((fp = vstream_fopen(vstring_str(path), O_WRONLY | O_CREAT | O_TRUNC,
			    0644)) == 0)
	msg_fatal("open %s: %m", vstring_str(path));
    if (vstream_fwrite(fp, vstring_str(buf), VSTRING_LEN(buf))
	!= VSTRING_LEN(buf) || vstream_fclose(fp) != 0)
	msg_fatal("write %s: %m", vstring_str(path));
    vstring_free(path);
}

/* write_one - one object as a complete attribute list */

static void write_one(const char *target, const char *label,
		              const FUZZ_CODEC *codec,
		              ATTR_PRINT_CUSTOM_FN print_fn, const void *ptr)
{
    VSTRING *buf = vstring_alloc(1000);

    fuzz_print(buf, codec, print_fn, ptr);
    write_seed(target, label, buf);
    vstring_free(buf);
}

/* versioned_context_print - what tlsproxy(8) sends with TLS_PROXY_FLAG_SEND_VERSION */

static int versioned_context_print(ATTR_PRINT_COMMON_FN print_fn, VSTREAM *fp,
				           int flags, const void *ptr)
{
    return (print_fn(fp, flags | ATTR_FLAG_MORE,
		     SEND_ATTR_INT(TLS_ATTR_CONTEXT_VERSION,
				   TLS_PROXY_CONTEXT_VERSION),
		     SEND_ATTR_FUNC(tls_proxy_context_print, ptr),
		     ATTR_TYPE_END));
}

/* client_params - TLS_CLIENT_PARAMS with main.cf defaults */

static void client_params(TLS_CLIENT_PARAMS *params)
{
    memset(params, 0, sizeof(*params));
    params->tls_cnf_file = "";
    params->tls_cnf_name = "";
    params->tls_high_clist = DEF_TLS_HIGH_CLIST;
    params->tls_medium_clist = DEF_TLS_MEDIUM_CLIST;
    params->tls_null_clist = DEF_TLS_NULL_CLIST;
    params->tls_eecdh_auto = DEF_TLS_EECDH_AUTO;
    params->tls_eecdh_strong = DEF_TLS_EECDH_STRONG;
    params->tls_eecdh_ultra = DEF_TLS_EECDH_ULTRA;
    params->tls_ffdhe_auto = DEF_TLS_FFDHE_AUTO;
    params->tls_bug_tweaks = DEF_TLS_BUG_TWEAKS;
    params->tls_ssl_options = DEF_TLS_SSL_OPTIONS;
    params->tls_dane_digests = DEF_TLS_DANE_DIGESTS;
    params->tls_mgr_service = DEF_TLS_MGR_SERVICE;
    params->tls_tkt_cipher = DEF_TLS_TKT_CIPHER;
    params->tls_daemon_rand_bytes = DEF_TLS_DAEMON_RAND_BYTES;
    params->tls_append_def_CA = DEF_TLS_APPEND_DEF_CA;
#ifdef DEF_TLS_BC_PKEY_FPRINT			/* Postfix 3.10 */
    params->tls_bc_pkey_fprint = DEF_TLS_BC_PKEY_FPRINT;
#endif
    params->tls_preempt_clist = DEF_TLS_PREEMPT_CLIST;
    params->tls_multi_wildcard = DEF_TLS_MULTI_WILDCARD;
#ifdef DEF_TLS_FAST_SHUTDOWN			/* Postfix 3.12 */
    params->tls_fast_shutdown = DEF_TLS_FAST_SHUTDOWN;
#endif
}

/* client_init - TLS_CLIENT_INIT_PROPS as smtp(8) makes them */

static void client_init(TLS_CLIENT_INIT_PROPS *props, int with_cert)
{
    memset(props, 0, sizeof(*props));
    props->log_param = "smtp_tls_loglevel";
    props->log_level = "1";
    props->verifydepth = 9;
    props->cache_type = "smtp";
    props->chain_files = "";
    props->cert_file = with_cert ? "/etc/postfix/client-cert.pem" : "";
    props->key_file = with_cert ? "/etc/postfix/client-key.pem" : "";
    props->dcert_file = "";
    props->dkey_file = "";
    props->eccert_file = "";
    props->eckey_file = "";
    props->CAfile = "/etc/ssl/certs/ca-certificates.crt";
    props->CApath = "/etc/ssl/certs";
    props->mdalg = "sha256";
}

/* client_start - TLS_CLIENT_START_PROPS as smtp(8) makes them */

static void client_start(TLS_CLIENT_START_PROPS *props, int level,
			         const ARGV *matchargv, const TLS_DANE *dane)
{
    memset(props, 0, sizeof(*props));
    props->fd = -1;
    props->timeout = 30;
    props->enable_rpk = 0;
    props->tls_level = level;
    props->nexthop = "example.com";
    props->host = "mx.example.com";
    props->namaddr = "mx.example.com[192.0.2.25]:25";
    props->sni = level == TLS_LEV_DANE ? "mx.example.com" : "";
    props->serverid = "smtp:192.0.2.25:25:mx.example.com"
	"&p=1&c=aNULL:-aNULL:HIGH:@STRENGTH";
    props->helo = "mx.example.com";
    props->protocols = ">=TLSv1.2";
    props->cipher_grade = "medium";
    props->cipher_exclusions = "";
    props->matchargv = matchargv;
    props->mdalg = "sha256";
    props->dane = dane;
    props->ffail_type = 0;
#ifdef HAS_TLS_TRACE				/* Postfix 3.12 */
    props->log_param = "smtp_tls_loglevel";
    props->log_level = "1";
    props->trace_size_limit = 102400;
    props->trace_peer = "192.0.2.25";
#endif
}

/* make_dane - TLS_DANE with a DANE-EE and a DANE-TA record */

static TLS_DANE *make_dane(void)
{
    TLS_DANE *dane = tls_dane_alloc();
    unsigned char digest[32];
    unsigned char full[64];
    int     i;

    for (i = 0; i < (int) sizeof(digest); i++)
	digest[i] = (unsigned char) (0x5a ^ (i * 7));
    for (i = 0; i < (int) sizeof(full); i++)
	full[i] = (unsigned char) (0xc3 ^ (i * 13));
    dane->base_domain = mystrdup("mx.example.com");
    /* DANE-TA(2) SPKI(1) SHA2-512(2), then DANE-EE(3) SPKI(1) SHA2-256(1) */
    dane->tlsa = tlsa_prepend(dane->tlsa, 2, 1, 2, full, sizeof(full));
    dane->tlsa = tlsa_prepend(dane->tlsa, 3, 1, 1, digest, sizeof(digest));
    return (dane);
}

/* read_der - DER encoding of the first certificate in a PEM file */

static VSTRING *read_der(const char *pem_file)
{
    FILE   *fp;
    X509   *cert;
    VSTRING *der;

    if ((fp = fopen(pem_file, "r")) == 0)
	msg_fatal("open %s: %m", pem_file);
    if ((cert = PEM_read_X509(fp, (X509 **) 0, 0, 0)) == 0)
	msg_fatal("%s: no certificate", pem_file);
    fclose(fp);
    if ((der = tls_peer_cert_der(cert)) == 0)
	msg_fatal("%s: cannot encode certificate", pem_file);
    X509_free(cert);
    return (der);
}

/* sess_state - TLS_SESS_STATE as tlsproxy(8) returns it */

static void sess_state(TLS_SESS_STATE *ctx, int level, VSTRING *der)
{
    memset(ctx, 0, sizeof(*ctx));
    ctx->level = level;
    ctx->peer_CN = "mx.example.net";
    ctx->issuer_CN = "Test CA";
    ctx->peer_cert_fprint = der ?
	"6B:5E:0D:2C:9A:41:77:E0:1F:33:8B:C2:90:AD:4E:18:"
	"72:35:66:A9:0C:DF:81:B4:3E:57:09:C6:2A:E8:F1:94" : "";
    ctx->peer_pkey_fprint = der ?
	"A1:09:3C:77:5E:D2:46:BB:08:9F:E4:61:2D:C5:70:1A:"
	"38:F6:93:0E:7B:54:C1:2F:86:DA:4B:E9:15:60:A7:3D" : "";
    ctx->peer_cert_der = der;
    ctx->peer_status = der ? (TLS_CERT_FLAG_ALTNAME | TLS_CERT_FLAG_TRUSTED
			      | TLS_CERT_FLAG_MATCHED) : 0;
    ctx->protocol = "TLSv1.3";
    ctx->cipher_name = "TLS_AES_256_GCM_SHA384";
    ctx->cipher_usebits = 256;
    ctx->cipher_algbits = 256;
    ctx->kex_name = "X25519";
    ctx->kex_curve = "";
    ctx->kex_bits = 253;
    ctx->ctos_rpk = 0;
    ctx->stoc_rpk = 0;
    ctx->clnt_sig_name = "";
    ctx->clnt_sig_curve = "";
    ctx->clnt_sig_bits = 0;
    ctx->clnt_sig_dgst = "";
    ctx->srvr_sig_name = "ECDSA";
    ctx->srvr_sig_curve = "prime256v1";
    ctx->srvr_sig_bits = 256;
    ctx->srvr_sig_dgst = "SHA256";
    ctx->namaddr = "mx.example.net[192.0.2.25]:25";
    ctx->rpt_reported = 0;
}

/* endp_prop - smtp(8) endpoint properties with optional TLS state */

static void endp_prop(const char *label, int level, TLS_SESS_STATE *ctx)
{
    VSTRING *buf = vstring_alloc(1000);
    VSTREAM *mp = vstream_memopen(buf, O_WRONLY);

    /* The same as smtp_session_passivate(). */
    if (attr_print_plain(mp, ATTR_FLAG_NONE,
			 SEND_ATTR_INT("tls_level", level),
			 SEND_ATTR_INT("reuse_count", 3),
			 SEND_ATTR_INT("endpoint_features", 0x1c0),
			 SEND_ATTR_LONG("expire_time", 1795000000L),
			 SEND_ATTR_LONG("cache_deadline", 1794999708L),
			 ATTR_TYPE_END) != 0
	|| (ctx && attr_print_plain(mp, ATTR_FLAG_NONE,
				    SEND_ATTR_FUNC(tls_proxy_context_print,
						   (void *) ctx),
				    ATTR_TYPE_END) != 0)
	|| vstream_fclose(mp) != 0)
	msg_fatal("cannot write endpoint properties");
    write_seed("context_plain", label, buf);
    vstring_free(buf);
}

/* tlsproxy_request - a complete client request as tls_proxy_open() sends */

static void tlsproxy_request(const char *label, int flags,
			             TLS_CLIENT_PARAMS *params,
			             TLS_CLIENT_INIT_PROPS *init,
			             TLS_CLIENT_START_PROPS *start)
{
    VSTRING *buf = vstring_alloc(1000);
    VSTREAM *mp = vstream_memopen(buf, O_WRONLY);

    if (attr_print(mp, ATTR_FLAG_NONE,
		   SEND_ATTR_STR(TLS_ATTR_REMOTE_ENDPT, "[192.0.2.25]:25"),
		   SEND_ATTR_INT(TLS_ATTR_FLAGS, flags),
		   SEND_ATTR_INT(TLS_ATTR_TIMEOUT, 30),
		   SEND_ATTR_INT(TLS_ATTR_TIMEOUT, 300),
		   SEND_ATTR_STR(TLS_ATTR_SERVERID, start->serverid),
		   ATTR_TYPE_END) != 0
	|| ((flags & TLS_PROXY_FLAG_ROLE_CLIENT)
	    && attr_print(mp, ATTR_FLAG_NONE,
			  SEND_ATTR_FUNC(tls_proxy_client_param_print, params),
			  SEND_ATTR_FUNC(tls_proxy_client_init_print, init),
			  SEND_ATTR_FUNC(tls_proxy_client_start_print, start),
			  ATTR_TYPE_END) != 0)
	|| vstream_fclose(mp) != 0)
	msg_fatal("cannot write tlsproxy request");
    write_seed("tlsproxy_request", label, buf);
    vstring_free(buf);
}

/* main - write all seeds */

int     main(int argc, char **argv)
{
    const FUZZ_CODEC *zero = &fuzz_codec_zero;
    TLS_CLIENT_PARAMS params;
    TLS_CLIENT_INIT_PROPS init;
    TLS_CLIENT_START_PROPS start;
    TLS_SERVER_INIT_PROPS sinit;
    TLS_SERVER_START_PROPS sstart;
    TLS_SESS_STATE ctx;
    TLS_DANE *dane;
    ARGV   *secure_names;
    ARGV   *verify_names;
    VSTRING *der;

    msg_vstream_init(argv[0], VSTREAM_ERR);
    if (argc != 3)
	msg_fatal("usage: %s corpus-directory certificate.pem", argv[0]);
    corpus_dir = argv[1];
    der = read_der(argv[2]);
    dane = make_dane();
    secure_names = argv_alloc(2);
    argv_add(secure_names, "nexthop", "dot-nexthop", ARGV_END);
    verify_names = argv_alloc(1);
    argv_add(verify_names, "hostname", ARGV_END);

    /*
     * TLS_CLIENT_PARAMS.
     */
    client_params(&params);
    write_one("client_param", "defaults", zero,
	      tls_proxy_client_param_print, &params);
    params.tls_cnf_file = "/etc/postfix/openssl.cnf";
    params.tls_cnf_name = "postfix";
    params.tls_ssl_options = "NO_RENEGOTIATION NO_TICKET";
    params.tls_preempt_clist = 1;
    write_one("client_param", "custom", zero,
	      tls_proxy_client_param_print, &params);
    client_params(&params);

    /*
     * TLS_CLIENT_INIT_PROPS.
     */
    client_init(&init, 0);
    write_one("client_init", "default", zero,
	      tls_proxy_client_init_print, &init);
    client_init(&init, 1);
    write_one("client_init", "client-cert", zero,
	      tls_proxy_client_init_print, &init);
    client_init(&init, 0);

    /*
     * TLS_CLIENT_START_PROPS, one per level that matters.
     */
    client_start(&start, TLS_LEV_MAY, (ARGV *) 0, (TLS_DANE *) 0);
    write_one("client_start", "may", zero,
	      tls_proxy_client_start_print, &start);
    client_start(&start, TLS_LEV_ENCRYPT, (ARGV *) 0, (TLS_DANE *) 0);
    write_one("client_start", "encrypt", zero,
	      tls_proxy_client_start_print, &start);
    client_start(&start, TLS_LEV_VERIFY, verify_names, (TLS_DANE *) 0);
    write_one("client_start", "verify", zero,
	      tls_proxy_client_start_print, &start);
    client_start(&start, TLS_LEV_SECURE, secure_names, (TLS_DANE *) 0);
    write_one("client_start", "secure", zero,
	      tls_proxy_client_start_print, &start);
    client_start(&start, TLS_LEV_DANE, (ARGV *) 0, dane);
    write_one("client_start", "dane", zero,
	      tls_proxy_client_start_print, &start);
    start.ffail_type = "dane";
    write_one("client_start", "dane-ffail", zero,
	      tls_proxy_client_start_print, &start);

    /*
     * Complete tlsproxy(8) client requests.
     */
    client_start(&start, TLS_LEV_ENCRYPT, (ARGV *) 0, (TLS_DANE *) 0);
    tlsproxy_request("encrypt", TLS_PROXY_FLAG_ROLE_CLIENT
		     | TLS_PROXY_FLAG_SEND_CONTEXT, &params, &init, &start);
    client_start(&start, TLS_LEV_SECURE, secure_names, (TLS_DANE *) 0);
    tlsproxy_request("secure", TLS_PROXY_FLAG_ROLE_CLIENT
		     | TLS_PROXY_FLAG_SEND_CONTEXT, &params, &init, &start);
    client_start(&start, TLS_LEV_DANE, (ARGV *) 0, dane);
    tlsproxy_request("dane", TLS_PROXY_FLAG_ROLE_CLIENT
		     | TLS_PROXY_FLAG_SEND_CONTEXT, &params, &init, &start);
    tlsproxy_request("server-role", TLS_PROXY_FLAG_ROLE_SERVER,
		     &params, &init, &start);

    /*
     * TLS_SERVER_INIT_PROPS and TLS_SERVER_START_PROPS.
     */
    memset(&sinit, 0, sizeof(sinit));
    sinit.log_param = "smtpd_tls_loglevel";
    sinit.log_level = "1";
    sinit.verifydepth = 9;
    sinit.cache_type = "smtpd";
    sinit.set_sessid = 1;
    sinit.chain_files = "/etc/postfix/chain.pem";
    sinit.cert_file = "";
    sinit.key_file = "";
    sinit.dcert_file = "";
    sinit.dkey_file = "";
    sinit.eccert_file = "";
    sinit.eckey_file = "";
    sinit.CAfile = "";
    sinit.CApath = "";
    sinit.protocols = ">=TLSv1.2";
    sinit.eecdh_grade = "auto";
    sinit.dh1024_param_file = "";
    sinit.dh512_param_file = "";
    sinit.ask_ccert = 0;
    sinit.mdalg = "sha256";
    write_one("server_init", "default", zero,
	      tls_proxy_server_init_print, &sinit);
    memset(&sstart, 0, sizeof(sstart));
    sstart.fd = -1;
    sstart.timeout = 300;
    sstart.requirecert = 0;
    sstart.serverid = "smtpd";
    sstart.namaddr = "client.example.com[198.51.100.7]:41234";
    sstart.cipher_grade = "medium";
    sstart.cipher_exclusions = "aNULL";
    sstart.mdalg = "sha256";
    write_one("server_start", "default", zero,
	      tls_proxy_server_start_print, &sstart);

    /*
     * TLS_SESS_STATE from tlsproxy(8), without and with the matched
     * server certificate: versioned, and version 1 for clients that ask
     * for no version.
     */
    sess_state(&ctx, TLS_LEV_ENCRYPT, (VSTRING *) 0);
    write_one("context", "encrypt", zero, versioned_context_print, &ctx);
    write_one("context", "v1-encrypt", zero, tls_proxy_context_print_v1,
	      &ctx);
    sess_state(&ctx, TLS_LEV_SECURE, der);
    write_one("context", "secure-cert", zero, versioned_context_print, &ctx);
    write_one("context", "v1-secure", zero, tls_proxy_context_print_v1,
	      &ctx);

    /*
     * The same in scache(8) endpoint properties.
     */
    endp_prop("none", TLS_LEV_NONE, (TLS_SESS_STATE *) 0);
    endp_prop("may-plaintext", TLS_LEV_MAY, (TLS_SESS_STATE *) 0);
    sess_state(&ctx, TLS_LEV_ENCRYPT, (VSTRING *) 0);
    endp_prop("encrypt", TLS_LEV_ENCRYPT, &ctx);
    sess_state(&ctx, TLS_LEV_SECURE, der);
    endp_prop("secure-cert", TLS_LEV_SECURE, &ctx);
    sess_state(&ctx, TLS_LEV_VERIFY, der);
    endp_prop("verify-cert", TLS_LEV_VERIFY, &ctx);

    argv_free(secure_names);
    argv_free(verify_names);
    tls_dane_free(dane);
    vstring_free(der);
    return (0);
}
