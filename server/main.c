/* main.c - the tessera binary: dispatches to a subcommand. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void usage(FILE *f)
{
    fprintf(f,
            "tessera %s - serves token-based image generators\n"
            "\n"
            "usage: tessera <command> [options]\n"
            "\n"
            "commands:\n"
            "  generate   generate images from a model folder and write PNGs\n"
            "  serve      serve a model over HTTP (REST, Server-Sent Events, web page)\n"
            "  version    print the version\n"
            "\n"
            "Run `tessera <command> --help` for a command's options.\n",
            TESSERA_VERSION);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "generate") == 0) return cmd_generate(argc - 1, argv + 1);
    if (strcmp(cmd, "serve") == 0) return cmd_serve(argc - 1, argv + 1);
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("tessera %s\n", TESSERA_VERSION);
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "tessera: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
