using System.Text;
using Haven.Core;

namespace Haven.Storage.S3;

/// <summary>
/// Where an S3-compatible repository is and how to sign requests to it.
/// <paramref name="Endpoint"/> is the service URL (<c>http://127.0.0.1:17480</c>, <c>https://s3.eu-west-1.amazonaws.com</c>);
/// <paramref name="Prefix"/> is a folder inside the bucket without leading or trailing '/', or "" for the bucket's root.
/// <see cref="ToString"/> leaves the secret key out, so the options can be logged.
/// </summary>
public sealed record S3StoreOptions(
    string Endpoint,
    string Bucket,
    string Prefix,
    string AccessKey,
    string SecretKey,
    string Region = "us-east-1",
    bool PathStyle = true)
{
    /// <summary>The repository URL scheme: <c>s3:</c> followed by the endpoint URL and the bucket.</summary>
    public const string Scheme = "s3:";

    /// <summary>The URL form shown to users: endpoint, bucket and prefix, never credentials.</summary>
    public string Location =>
        $"{Scheme}{Endpoint.TrimEnd('/')}/{Bucket}" + (Prefix.Length == 0 ? "" : "/" + Prefix);

    /// <summary>True for strings that name an S3 repository (<c>s3:…</c>), so callers can pick the store by URL.</summary>
    public static bool IsS3Url(string repository) => repository.StartsWith(Scheme, StringComparison.OrdinalIgnoreCase);

    /// <summary>
    /// Reads a repository URL of the form <c>s3:http[s]://host[:port]/bucket[/prefix…]</c>
    /// (or <c>s3:host[:port]/bucket[/prefix…]</c>, which means https), taking the credentials from
    /// <c>AWS_ACCESS_KEY_ID</c> and <c>AWS_SECRET_ACCESS_KEY</c> and the region from <c>AWS_DEFAULT_REGION</c>
    /// (or <c>AWS_REGION</c>; default us-east-1) in <paramref name="environment"/>.
    /// Credentials inside the URL are refused, so they never reach shell history or logs.
    /// </summary>
    /// <exception cref="HavenException">With <see cref="ErrorCode.Usage"/> and a hint, for any malformed URL or missing credential.</exception>
    public static S3StoreOptions Parse(string url, IReadOnlyDictionary<string, string?> environment)
    {
        ArgumentNullException.ThrowIfNull(url);
        ArgumentNullException.ThrowIfNull(environment);
        const string form = "the form is s3:http[s]://host[:port]/bucket[/prefix], e.g. s3:https://s3.example.com/backups/laptops";

        if (!IsS3Url(url))
        {
            throw Usage($"'{url}' is not an S3 repository URL", form);
        }

        string rest = url[Scheme.Length..];
        if (!rest.Contains("://", StringComparison.Ordinal))
        {
            rest = "https://" + rest.TrimStart('/');
        }

        if (!Uri.TryCreate(rest, UriKind.Absolute, out var uri) || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps))
        {
            throw Usage($"'{url}' is not a valid S3 repository URL", form);
        }

        if (uri.UserInfo.Length > 0)
        {
            throw Usage(
                $"the S3 URL '{Scheme}{uri.Scheme}://…@{uri.Authority}{uri.AbsolutePath}' contains credentials",
                "take them out of the URL and set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead");
        }

        if (uri.Query.Length > 0 || uri.Fragment.Length > 0)
        {
            throw Usage($"the S3 URL '{url}' has a query or fragment ('?' or '#'), which Haven does not use", form);
        }

        // The path is taken from the text as written: Uri would resolve "bucket/../other" to "other" silently.
        int authorityEnd = rest.IndexOf('/', rest.IndexOf("://", StringComparison.Ordinal) + 3);
        string path = authorityEnd < 0 ? "" : rest[authorityEnd..];
        string[] segments = path.Split('/', StringSplitOptions.RemoveEmptyEntries);
        if (segments.Length == 0)
        {
            throw Usage($"the S3 URL '{url}' names no bucket", form);
        }

        string bucket = segments[0];
        if (!IsValidBucketName(bucket))
        {
            throw Usage(
                $"'{bucket}' is not a valid S3 bucket name",
                "bucket names have 3 to 63 characters: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit");
        }

        foreach (string segment in segments.AsSpan(1))
        {
            if (segment is "." or ".." || segment.Any(c => char.IsControl(c) || c == '\\'))
            {
                throw Usage($"the prefix in the S3 URL '{url}' contains '{segment}', which is not allowed", form);
            }
        }

        string prefix = string.Join('/', segments.AsSpan(1).ToArray());
        string endpoint = uri.GetLeftPart(UriPartial.Authority);

        string? accessKey = Lookup(environment, "AWS_ACCESS_KEY_ID");
        string? secretKey = Lookup(environment, "AWS_SECRET_ACCESS_KEY");
        if (accessKey is null || secretKey is null)
        {
            string missing = (accessKey, secretKey) switch
            {
                (null, null) => "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are",
                (null, _) => "AWS_ACCESS_KEY_ID is",
                _ => "AWS_SECRET_ACCESS_KEY is",
            };
            throw Usage(
                $"{missing} not set: Haven needs S3 credentials for {Scheme}{endpoint}/{bucket}",
                "export AWS_ACCESS_KEY_ID=… and AWS_SECRET_ACCESS_KEY=… with the keys of a user that may read and write the bucket");
        }

        string region = Lookup(environment, "AWS_DEFAULT_REGION") ?? Lookup(environment, "AWS_REGION") ?? "us-east-1";
        return new S3StoreOptions(endpoint, bucket, prefix, accessKey, secretKey, region);
    }

    /// <summary>Parses with the process environment; see <see cref="Parse(string, IReadOnlyDictionary{string, string?})"/>.</summary>
    public static S3StoreOptions Parse(string url)
    {
        var environment = new Dictionary<string, string?>(StringComparer.Ordinal);
        foreach (string name in new[] { "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_REGION" })
        {
            environment[name] = Environment.GetEnvironmentVariable(name);
        }

        return Parse(url, environment);
    }

    /// <summary>The S3 rules for bucket names (the ones every implementation accepts).</summary>
    public static bool IsValidBucketName(string name)
    {
        if (name.Length is < 3 or > 63 || !char.IsAsciiLetterLower(name[0]) && !char.IsAsciiDigit(name[0])
            || !char.IsAsciiLetterLower(name[^1]) && !char.IsAsciiDigit(name[^1]) || name.Contains("..", StringComparison.Ordinal))
        {
            return false;
        }

        return name.All(c => char.IsAsciiLetterLower(c) || char.IsAsciiDigit(c) || c is '-' or '.');
    }

    /// <summary>Everything but the secret key.</summary>
    private bool PrintMembers(StringBuilder builder)
    {
        builder.Append($"Endpoint = {Endpoint}, Bucket = {Bucket}, Prefix = {Prefix}, AccessKey = {AccessKey}, SecretKey = ***, Region = {Region}, PathStyle = {PathStyle}");
        return true;
    }

    private static string? Lookup(IReadOnlyDictionary<string, string?> environment, string name) =>
        environment.TryGetValue(name, out string? value) && !string.IsNullOrWhiteSpace(value) ? value.Trim() : null;

    private static HavenException Usage(string message, string hint) => new(ErrorCode.Usage, message, hint);
}
