/*
 * tlsrpt.c - test stub of the TLSRPT client library
 *
 * Implements the libtlsrpt functions that Postfix's tlsrpt_wrapper.c calls
 * (see tlsrpt.h). Instead of sending a report to a TLSRPT collector, every
 * call appends one line to a record file:
 *
 *	<pid> <function> <name>=<value> ...
 *
 * separated by tabs; calls that belong to a delivery request also carry
 * "dr=<pid>.<serial>" and "domain=<TLSRPT policy domain>", and
 * tlsrpt_finish_delivery_request() summarizes the request that it finishes
 * (policy type, final result, number of failure details), so that a test
 * can count the reports per domain without pairing lines of concurrent
 * processes. Null strings are written as "(null)"; tabs and line breaks
 * in values become spaces.
 *
 * The record file is $TLSRPT_STUB_RECORD when that is set (Postfix daemons
 * see it only through import_environment), otherwise the socket name that
 * tlsrpt_open() is given with ".record" appended. It is opened for append
 * by every tlsrpt_open(), and each line is written with one write(2), so
 * that lines of smtp(8) and tlsproxy(8) processes do not mix. The directory
 * must be writable by the user that the Postfix daemons run as.
 *
 * Error codes: 0 is success; 1..999 are "internal" errors of this stub;
 * 1000 + errno is a system error.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tlsrpt.h"

#define STUB_ERR_NOMEM		1
#define STUB_ERR_USAGE		2
#define STUB_ERR_ERRNO_BASE	1000

struct tlsrpt_connection_t {
    int     fd;				/* record file */
    char   *socket_name;		/* as given to tlsrpt_open() */
};

struct tlsrpt_dr_t {
    struct tlsrpt_connection_t *con;
    char    id[40];			/* pid.serial */
    char   *domain;			/* TLSRPT policy domain */
    int     have_policy;		/* tlsrpt_init_policy() called */
    int     policy_type;		/* last tlsrpt_init_policy() type */
    int     final;			/* last tlsrpt_finish_policy() */
    int     policies;			/* finished policies */
    int     failures;			/* failure details */
};

static unsigned long dr_serial;

/* stub_append - append text to a line buffer, sanitized */

static void stub_append(char *buf, size_t size, size_t *len, const char *text)
{
    const char *cp;

    for (cp = text ? text : "(null)"; *cp && *len + 1 < size; cp++)
	buf[(*len)++] = (*cp == '\t' || *cp == '\n' || *cp == '\r') ? ' ' : *cp;
    buf[*len] = 0;
}

/* stub_field_sep - append the field separator */

static void stub_field_sep(char *buf, size_t size, size_t *len)
{
    if (*len + 1 < size)
	buf[(*len)++] = '\t';
    buf[*len] = 0;
}

/* stub_record - write one record line: function, then name/value pairs */

static int stub_record(int fd, const char *func,...)
{
    char    buf[8192];
    char    num[32];
    size_t  len = 0;
    const char *name;
    va_list ap;

    snprintf(num, sizeof(num), "%ld", (long) getpid());
    stub_append(buf, sizeof(buf), &len, num);
    stub_field_sep(buf, sizeof(buf), &len);
    stub_append(buf, sizeof(buf), &len, func);
    va_start(ap, func);
    while ((name = va_arg(ap, const char *)) != 0) {
	stub_field_sep(buf, sizeof(buf), &len);
	stub_append(buf, sizeof(buf), &len, name);
	stub_append(buf, sizeof(buf), &len, "=");
	stub_append(buf, sizeof(buf), &len, va_arg(ap, const char *));
    }
    va_end(ap);
    if (len + 1 >= sizeof(buf))
	len = sizeof(buf) - 2;
    buf[len++] = '\n';
    if (fd < 0 || write(fd, buf, len) != (ssize_t) len)
	return (STUB_ERR_ERRNO_BASE + (errno ? errno : EIO));
    return (0);
}

static const char *stub_int(char *buf, size_t size, long value)
{
    snprintf(buf, size, "%ld", value);
    return (buf);
}

/* Library version. */

int     tlsrpt_version_check(int major, int minor, int patch)
{
    (void) patch;
    return (major == TLSRPT_VERSION_MAJOR && minor <= TLSRPT_VERSION_MINOR);
}

const char *tlsrpt_version(void)
{
    return (TLSRPT_VERSION_STRING);
}

/* Connection to the (imaginary) collector: the record file. */

int     tlsrpt_open(struct tlsrpt_connection_t **pcon, const char *socket_name)
{
    struct tlsrpt_connection_t *con;
    const char *path = getenv("TLSRPT_STUB_RECORD");
    char   *own = 0;
    int     err;

    *pcon = 0;
    if (socket_name == 0)
	return (STUB_ERR_USAGE);
    if (path == 0 || *path == 0) {
	if ((own = malloc(strlen(socket_name) + sizeof(".record"))) == 0)
	    return (STUB_ERR_NOMEM);
	strcpy(own, socket_name);
	strcat(own, ".record");
	path = own;
    }
    if ((con = calloc(1, sizeof(*con))) == 0
	|| (con->socket_name = strdup(socket_name)) == 0) {
	free(con);
	free(own);
	return (STUB_ERR_NOMEM);
    }
    if ((con->fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0644)) < 0) {
	err = STUB_ERR_ERRNO_BASE + errno;
	free(con->socket_name);
	free(con);
	free(own);
	return (err);
    }
    free(own);
    *pcon = con;
    return (stub_record(con->fd, "tlsrpt_open", "socket", socket_name,
			(char *) 0));
}

int     tlsrpt_close(struct tlsrpt_connection_t **pcon)
{
    struct tlsrpt_connection_t *con = *pcon;
    int     res;

    if (con == 0)
	return (STUB_ERR_USAGE);
    res = stub_record(con->fd, "tlsrpt_close", "socket", con->socket_name,
		      (char *) 0);
    (void) close(con->fd);
    free(con->socket_name);
    free(con);
    *pcon = 0;
    return (res);
}

/* Delivery requests. */

int     tlsrpt_init_delivery_request(struct tlsrpt_dr_t **pdr,
				             struct tlsrpt_connection_t *con,
				             const char *domain,
				             const char *policy)
{
    struct tlsrpt_dr_t *dr;

    *pdr = 0;
    if (con == 0 || domain == 0)
	return (STUB_ERR_USAGE);
    if ((dr = calloc(1, sizeof(*dr))) == 0
	|| (dr->domain = strdup(domain)) == 0) {
	free(dr);
	return (STUB_ERR_NOMEM);
    }
    dr->con = con;
    dr->final = -1;
    snprintf(dr->id, sizeof(dr->id), "%ld.%lu", (long) getpid(), ++dr_serial);
    *pdr = dr;
    return (stub_record(con->fd, "tlsrpt_init_delivery_request",
			"dr", dr->id, "domain", domain, "policy", policy,
			(char *) 0));
}

int     tlsrpt_init_policy(struct tlsrpt_dr_t *dr,
			           tlsrpt_policy_type_t policy_type,
			           const char *policy_domain)
{
    char    num[32];

    if (dr == 0)
	return (STUB_ERR_USAGE);
    dr->have_policy = 1;
    dr->policy_type = policy_type;
    return (stub_record(dr->con->fd, "tlsrpt_init_policy", "dr", dr->id,
			"domain", dr->domain,
			"policy_type", stub_int(num, sizeof(num), policy_type),
			"policy_domain", policy_domain, (char *) 0));
}

int     tlsrpt_add_policy_string(struct tlsrpt_dr_t *dr, const char *text)
{
    if (dr == 0 || dr->have_policy == 0)
	return (STUB_ERR_USAGE);
    return (stub_record(dr->con->fd, "tlsrpt_add_policy_string",
			"dr", dr->id, "domain", dr->domain,
			"policy_string", text, (char *) 0));
}

int     tlsrpt_add_mx_host_pattern(struct tlsrpt_dr_t *dr, const char *text)
{
    if (dr == 0 || dr->have_policy == 0)
	return (STUB_ERR_USAGE);
    return (stub_record(dr->con->fd, "tlsrpt_add_mx_host_pattern",
			"dr", dr->id, "domain", dr->domain,
			"mx_host_pattern", text, (char *) 0));
}

int     tlsrpt_add_delivery_request_failure(struct tlsrpt_dr_t *dr,
					            tlsrpt_failure_t code,
					            const char *sending_mta_ip,
					       const char *receiving_mx_hostname,
					           const char *receiving_mx_helo,
					            const char *receiving_ip,
					       const char *additional_information,
					         const char *failure_reason_code)
{
    char    num[32];

    if (dr == 0 || dr->have_policy == 0)
	return (STUB_ERR_USAGE);
    dr->failures += 1;
    return (stub_record(dr->con->fd, "tlsrpt_add_delivery_request_failure",
			"dr", dr->id, "domain", dr->domain,
			"failure_code", stub_int(num, sizeof(num), code),
			"sending_mta_ip", sending_mta_ip,
			"receiving_mx_hostname", receiving_mx_hostname,
			"receiving_mx_helo", receiving_mx_helo,
			"receiving_ip", receiving_ip,
			"additional_information", additional_information,
			"failure_reason_code", failure_reason_code,
			(char *) 0));
}

int     tlsrpt_finish_policy(struct tlsrpt_dr_t *dr,
			             tlsrpt_final_result_t result)
{
    if (dr == 0 || dr->have_policy == 0)
	return (STUB_ERR_USAGE);
    dr->final = result;
    dr->policies += 1;
    return (stub_record(dr->con->fd, "tlsrpt_finish_policy",
			"dr", dr->id, "domain", dr->domain, "result",
			result == TLSRPT_FINAL_SUCCESS ? "success" :
			result == TLSRPT_FINAL_FAILURE ? "failure" : "other",
			(char *) 0));
}

static void stub_dr_free(struct tlsrpt_dr_t **pdr)
{
    free((*pdr)->domain);
    free(*pdr);
    *pdr = 0;
}

int     tlsrpt_finish_delivery_request(struct tlsrpt_dr_t **pdr)
{
    struct tlsrpt_dr_t *dr = *pdr;
    char    num1[32];
    char    num2[32];
    char    num3[32];
    int     res;

    if (dr == 0)
	return (STUB_ERR_USAGE);
    res = stub_record(dr->con->fd, "tlsrpt_finish_delivery_request",
		      "dr", dr->id, "domain", dr->domain,
		      "policy_type", stub_int(num1, sizeof(num1),
					      dr->policy_type),
		      "result", dr->final == TLSRPT_FINAL_SUCCESS ? "success" :
		      dr->final == TLSRPT_FINAL_FAILURE ? "failure" : "none",
		      "policies", stub_int(num2, sizeof(num2), dr->policies),
		      "failures", stub_int(num3, sizeof(num3), dr->failures),
		      (char *) 0);
    stub_dr_free(pdr);
    return (res);
}

int     tlsrpt_cancel_delivery_request(struct tlsrpt_dr_t **pdr)
{
    struct tlsrpt_dr_t *dr = *pdr;
    int     res;

    if (dr == 0)
	return (STUB_ERR_USAGE);
    res = stub_record(dr->con->fd, "tlsrpt_cancel_delivery_request",
		      "dr", dr->id, "domain", dr->domain, (char *) 0);
    stub_dr_free(pdr);
    return (res);
}

/* Error codes. */

int     tlsrpt_error_code_is_internal(int code)
{
    return (code != 0 && code < STUB_ERR_ERRNO_BASE);
}

int     tlsrpt_errno_from_error_code(int code)
{
    return (code >= STUB_ERR_ERRNO_BASE ? code - STUB_ERR_ERRNO_BASE : 0);
}

const char *tlsrpt_strerror(int code)
{
    switch (code) {
    case 0:
	return ("success");
    case STUB_ERR_NOMEM:
	return ("tlsrpt stub: out of memory");
    case STUB_ERR_USAGE:
	return ("tlsrpt stub: bad call order or null argument");
    default:
	return (code >= STUB_ERR_ERRNO_BASE ?
		strerror(code - STUB_ERR_ERRNO_BASE) :
		"tlsrpt stub: unknown error");
    }
}
