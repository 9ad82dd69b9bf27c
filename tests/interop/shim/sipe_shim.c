/*
 * LD_PRELOAD shim for pidgin-sipe 1.25 on Debian 12 under bitlbee (test use only).
 * It does two things; neither changes what sipe sends or accepts on the wire.
 *
 * 1. XML. Why: sipe parses every XML body (contact list, presence categories, roaming-self,
 * provisioning, conference state) through xmlSAXUserParseMemory() with a handler that
 * fills in only the SAX1 element callbacks yet claims to be a SAX2 handler
 * (initialized == XML_SAX2_MAGIC). Debian 12's libxml2 security updates stopped calling
 * SAX1 element callbacks on such handlers, so sipe sees an empty document every time.
 *
 * What: for a handler in that state (SAX2 magic, no namespace-aware callbacks, some SAX1
 * element callbacks), parse with a copy marked as a SAX1 handler; anything else is passed
 * through untouched.
 *
 * 2. The buddy menu. Why: bitlbee's `chat with NICK` starts a group chat by clicking the
 * buddy-menu item labelled "initiate chat" or "initiate conference"; sipe labels its item
 * "New chat", so bitlbee finds nothing to click. What: that one label is handed to
 * libpurple as "Initiate conference"; the callback (sipe's own "new chat") is unchanged.
 *
 * Build: cc -shared -fPIC -O2 $(pkg-config --cflags libxml-2.0) -o sipe_shim.so sipe_shim.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <libxml/parser.h>
#include <string.h>

typedef int (*parse_memory_fn)(xmlSAXHandlerPtr, void *, const char *, int);

int xmlSAXUserParseMemory(xmlSAXHandlerPtr handler, void *user_data, const char *buffer, int size)
{
	static parse_memory_fn next_impl;
	if (next_impl == NULL)
		next_impl = (parse_memory_fn)dlsym(RTLD_NEXT, "xmlSAXUserParseMemory");

	int sax1_only = handler != NULL && handler->initialized == XML_SAX2_MAGIC &&
		handler->startElementNs == NULL && handler->endElementNs == NULL &&
		(handler->startElement != NULL || handler->endElement != NULL);
	if (!sax1_only)
		return next_impl(handler, user_data, buffer, size);

	xmlSAXHandler as_sax1 = *handler;
	as_sax1.initialized = 1;
	return next_impl(&as_sax1, user_data, buffer, size);
}

typedef void *(*menu_action_new_fn)(const char *, void *, void *, void *);

void *purple_menu_action_new(const char *label, void *callback, void *data, void *children)
{
	static menu_action_new_fn next_impl;
	if (next_impl == NULL)
		next_impl = (menu_action_new_fn)dlsym(RTLD_NEXT, "purple_menu_action_new");

	if (label != NULL && strcmp(label, "New chat") == 0)
		label = "Initiate conference";
	return next_impl(label, callback, data, children);
}
