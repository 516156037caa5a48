using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using Haven.Core;
using Haven.Repository;
using Haven.Storage;
using Haven.Storage.S3;

namespace Haven.Cli.Infrastructure;

/// <summary>The options every command accepts (declared once, recursive).</summary>
public static class GlobalOptions
{
    public static readonly Option<string?> Repo = new("--repo", "-r")
    {
        Description = "Repository location: a folder path, or s3:http(s)://host[:port]/bucket[/prefix] (env HAVEN_REPOSITORY)",
        Recursive = true,
    };

    public static readonly Option<string?> PasswordFile = new("--password-file", "-p")
    {
        Description = "Read the repository password from this file (env HAVEN_PASSWORD_FILE)",
        Recursive = true,
    };

    public static readonly Option<string?> PasswordCommand = new("--password-command")
    {
        Description = "Run this shell command and use its output as the password (env HAVEN_PASSWORD_COMMAND)",
        Recursive = true,
    };

    public static readonly Option<string?> CacheDir = new("--cache-dir")
    {
        Description = "Folder for local caches (env HAVEN_CACHE_DIR)",
        Recursive = true,
    };

    public static readonly Option<bool> NoCache = new("--no-cache")
    {
        Description = "Do not use or fill the local cache",
        Recursive = true,
    };

    public static readonly Option<string?> ConfigFile = new("--config")
    {
        Description = "Read defaults from this JSON file (env HAVEN_CONFIG; default ~/.config/haven/config.json)",
        Recursive = true,
    };

    public static readonly Option<bool> Json = new("--json")
    {
        Description = "Print machine-readable JSON instead of text",
        Recursive = true,
    };

    public static readonly Option<bool> Quiet = new("--quiet", "-q")
    {
        Description = "Print only errors and the final result",
        Recursive = true,
    };

    public static readonly Option<string?> RetryLock = new("--retry-lock")
    {
        Description = "Wait up to this long for a locked repository (e.g. 30s, 5m)",
        Recursive = true,
    };

    public static void AddTo(RootCommand root)
    {
        foreach (var o in new Option[] { Repo, PasswordFile, PasswordCommand, CacheDir, NoCache, ConfigFile, Json, Quiet, RetryLock })
        {
            root.Options.Add(o);
        }
    }
}

/// <summary>Defaults read from the config file.</summary>
public sealed record CliConfigFile
{
    [System.Text.Json.Serialization.JsonPropertyName("repository")] public string? Repository { get; init; }
    [System.Text.Json.Serialization.JsonPropertyName("password_file")] public string? PasswordFile { get; init; }
    [System.Text.Json.Serialization.JsonPropertyName("password_command")] public string? PasswordCommand { get; init; }
    [System.Text.Json.Serialization.JsonPropertyName("cache_dir")] public string? CacheDir { get; init; }
}

/// <summary>What a command needs from the command line and environment: repository, password, output mode.</summary>
public sealed class CliContext
{
    private readonly ParseResult _parse;
    private readonly CliConfigFile _config;

    public CliContext(ParseResult parse)
    {
        _parse = parse;
        Json = parse.GetValue(GlobalOptions.Json);
        Quiet = parse.GetValue(GlobalOptions.Quiet);
        Output = new Output(Json, Quiet);
        _config = LoadConfig(parse.GetValue(GlobalOptions.ConfigFile) ?? Env("HAVEN_CONFIG"));
    }

    public bool Json { get; }

    public bool Quiet { get; }

    public Output Output { get; }

    public ParseResult Parse => _parse;

    /// <summary>An environment variable, or null when unset or empty.</summary>
    public static string? Env(string name) => Environment.GetEnvironmentVariable(name) is { Length: > 0 } v ? v : null;

    private static CliConfigFile LoadConfig(string? path)
    {
        bool explicitPath = path is not null;
        path ??= Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".config", "haven", "config.json");
        if (!File.Exists(path))
        {
            if (explicitPath)
            {
                throw new HavenException(ErrorCode.Usage, $"the config file {path} does not exist");
            }

            return new CliConfigFile();
        }

        try
        {
            return JsonSerializer.Deserialize(File.ReadAllBytes(path), CliJson.Default.CliConfigFile) ?? new CliConfigFile();
        }
        catch (JsonException e)
        {
            throw new HavenException(ErrorCode.Usage, $"the config file {path} is not valid JSON: {e.Message}");
        }
    }

    public string RepositoryLocation =>
        RepositoryLocationOrNull ?? throw new HavenException(ErrorCode.Usage, "no repository given", "pass --repo LOCATION or set HAVEN_REPOSITORY");

    private string? RepositoryLocationOrNull => _parse.GetValue(GlobalOptions.Repo) ?? Env("HAVEN_REPOSITORY") ?? _config.Repository;

    public string? CacheDir => _parse.GetValue(GlobalOptions.CacheDir) ?? Env("HAVEN_CACHE_DIR") ?? _config.CacheDir;

    /// <summary>The cache root actually used (journal and cached files).</summary>
    public string CacheRoot => CacheDir ?? UploadJournal.DefaultCacheRoot();

    /// <summary>
    /// Where a writer spools packs: the repository's own tmp/ folder when it is a local folder (a finished pack is then
    /// renamed into place, not copied), else spool/ in the cache root.
    /// </summary>
    public string SpoolDirectory => S3StoreOptions.IsS3Url(RepositoryLocation) || HostedLocation.Is(RepositoryLocation)
        ? Path.Combine(CacheRoot, "spool")
        : Path.Combine(LocalPath(RepositoryLocation), "tmp", Environment.MachineName);

    public TimeSpan RetryLock => _parse.GetValue(GlobalOptions.RetryLock) is { } s ? Units.ParseDuration(s, "--retry-lock") : TimeSpan.Zero;

    /// <summary>The repository's store, with retries around it.</summary>
    public IStore OpenStore(bool forInit = false) => OpenStoreAt(RepositoryLocation, forInit, "repository", "--repo");

    /// <summary>Opens the store at a repository location (a folder, local:PATH, an s3: URL, or haven: on a server), with retries around it.</summary>
    public static IStore OpenStoreAt(string location, bool forInit, string what, string option)
    {
        IStore inner;
        if (HostedLocation.Is(location))
        {
            inner = HostedLocation.Open(location);
        }
        else if (S3StoreOptions.IsS3Url(location))
        {
            var s3 = new S3Store(S3StoreOptions.Parse(location));
            if (forInit)
            {
                s3.EnsureBucketAsync(CancellationToken.None).GetAwaiter().GetResult();
            }

            inner = s3;
        }
        else
        {
            var full = LocalPath(location);
            if (!forInit && !Directory.Exists(full))
            {
                throw new HavenException(ErrorCode.RepositoryNotFound, $"there is no {what} at {full}", $"check {option}, or create one with 'haven init'");
            }

            inner = new LocalStore(full);
        }

        return new RetryingStore(inner, new RetryOptions());
    }

    /// <summary>The absolute folder of a local repository location ("local:" prefix allowed).</summary>
    public static string LocalPath(string location) =>
        Path.GetFullPath(location.StartsWith("local:", StringComparison.Ordinal) ? location["local:".Length..] : location);

    /// <summary>
    /// The password, from (in order) command, file, HAVEN_PASSWORD, config file, or an interactive prompt. For
    /// <c>haven:agent</c>, the key secret the agent received at enrolment comes before the prompt.
    /// </summary>
    public string GetPassword(string prompt = "repository password: ", bool confirm = false)
    {
        string? command = _parse.GetValue(GlobalOptions.PasswordCommand) ?? Env("HAVEN_PASSWORD_COMMAND") ?? _config.PasswordCommand;
        string? file = _parse.GetValue(GlobalOptions.PasswordFile) ?? Env("HAVEN_PASSWORD_FILE") ?? _config.PasswordFile;
        // The agent's key secret is read only when nothing else gives a password.
        string? value = Environment.GetEnvironmentVariable("HAVEN_PASSWORD")
            ?? (command is null && file is null && !confirm && RepositoryLocationOrNull == HostedLocation.Agent ? HostedLocation.AgentKeySecret() : null);
        return ResolvePassword(command, file, value, prompt, confirm);
    }

    /// <summary>The one order in which every password is looked for: command, file, variable, prompt.</summary>
    public static string ResolvePassword(string? command, string? file, string? value, string prompt, bool confirm = false)
    {
        if (command is not null)
        {
            return RunPasswordCommand(command);
        }

        if (file is not null)
        {
            return ReadPasswordFile(file);
        }

        return value ?? Prompt(prompt, confirm);
    }

    public static string ReadPasswordFile(string file)
    {
        try
        {
            var text = File.ReadAllText(file);
            return text.TrimEnd('\r', '\n');
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new HavenException(ErrorCode.Usage, $"cannot read the password file {file}: {e.Message}");
        }
    }

    public static string RunPasswordCommand(string command)
    {
        var psi = new ProcessStartInfo("/bin/sh") { RedirectStandardOutput = true, UseShellExecute = false };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add(command);
        using var p = Process.Start(psi) ?? throw new HavenException(ErrorCode.Usage, "the password command could not be started");
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0)
        {
            throw new HavenException(ErrorCode.Usage, $"the password command exited with code {p.ExitCode}");
        }

        return output.TrimEnd('\r', '\n');
    }

    public static string Prompt(string prompt, bool confirm)
    {
        if (Console.IsInputRedirected)
        {
            throw new HavenException(ErrorCode.Usage, "no password given and no terminal to ask for one",
                "set HAVEN_PASSWORD_FILE, HAVEN_PASSWORD_COMMAND or HAVEN_PASSWORD, or pass --password-file");
        }

        string first = ReadHidden(prompt);
        if (confirm && ReadHidden("enter it again: ") != first)
        {
            throw new HavenException(ErrorCode.Usage, "the passwords do not match");
        }

        if (first.Length == 0)
        {
            throw new HavenException(ErrorCode.Usage, "an empty password is not allowed");
        }

        return first;
    }

    private static string ReadHidden(string prompt)
    {
        Console.Error.Write(prompt);
        var chars = new System.Text.StringBuilder();
        while (true)
        {
            var key = Console.ReadKey(intercept: true);
            if (key.Key == ConsoleKey.Enter)
            {
                break;
            }

            if (key.Key == ConsoleKey.Backspace)
            {
                if (chars.Length > 0)
                {
                    chars.Length--;
                }

                continue;
            }

            chars.Append(key.KeyChar);
        }

        Console.Error.WriteLine();
        return chars.ToString();
    }

    /// <summary>Opens the repository (config, key); the index is loaded when <paramref name="loadIndex"/>.</summary>
    /// <remarks><paramref name="useCache"/> false for commands that verify or repair the repository itself.</remarks>
    public async Task<Haven.Repository.Repository> OpenRepositoryAsync(bool loadIndex, CancellationToken ct, bool useCache = true)
    {
        var store = OpenStore();
        var password = GetPassword();
        var repo = await Haven.Repository.Repository.OpenAsync(store, password, null, ct).ConfigureAwait(false);
        if (useCache && !_parse.GetValue(GlobalOptions.NoCache))
        {
            repo.UseCache(CacheDir ?? UploadJournal.DefaultCacheRoot());
        }

        if (loadIndex)
        {
            await repo.LoadIndexAsync(ct).ConfigureAwait(false);
        }

        return repo;
    }

    public Task<RepositoryLock> LockAsync(Haven.Repository.Repository repo, bool exclusive, string purpose, CancellationToken ct) =>
        RepositoryLock.AcquireAsync(repo, exclusive, purpose, RetryLock, ct);
}

[System.Text.Json.Serialization.JsonSerializable(typeof(CliConfigFile))]
public sealed partial class CliJson : System.Text.Json.Serialization.JsonSerializerContext;
