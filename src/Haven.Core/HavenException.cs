namespace Haven.Core;

/// <summary>
/// What went wrong, in terms a user can act on. Each code maps to one documented process exit code
/// (see <see cref="ExitCodes"/>); the CLI prints <see cref="Exception.Message"/> and <see cref="HavenException.Hint"/>
/// and never a stack trace.
/// </summary>
public enum ErrorCode
{
    Failed = 0,
    Usage,
    RepositoryNotFound,
    RepositoryExists,
    LockConflict,
    WrongPassword,
    UnsupportedFormat,
    Corrupt,
    NoSpace,
    SourceNotFound,
    NotFound,
    Interrupted,
    AccessDenied,
    Unavailable,
}

/// <summary>The process exit codes of the <c>haven</c> command, documented in <c>docs/exit-codes.md</c>.</summary>
public static class ExitCodes
{
    public const int Success = 0;
    public const int Failed = 1;
    public const int Usage = 2;
    /// <summary>A backup stored its snapshot, but some source files could not be read.</summary>
    public const int PartialBackup = 3;
    public const int RepositoryNotFound = 10;
    public const int LockConflict = 11;
    public const int WrongPassword = 12;
    public const int UnsupportedFormat = 13;
    public const int Corrupt = 14;
    public const int NoSpace = 15;
    public const int SourceNotFound = 16;
    public const int NotFound = 17;
    public const int AccessDenied = 18;
    public const int Unavailable = 19;
    public const int RepositoryExists = 20;
    public const int Interrupted = 130;

    public static int For(ErrorCode code) => code switch
    {
        ErrorCode.Usage => Usage,
        ErrorCode.RepositoryNotFound => RepositoryNotFound,
        ErrorCode.RepositoryExists => RepositoryExists,
        ErrorCode.LockConflict => LockConflict,
        ErrorCode.WrongPassword => WrongPassword,
        ErrorCode.UnsupportedFormat => UnsupportedFormat,
        ErrorCode.Corrupt => Corrupt,
        ErrorCode.NoSpace => NoSpace,
        ErrorCode.SourceNotFound => SourceNotFound,
        ErrorCode.NotFound => NotFound,
        ErrorCode.Interrupted => Interrupted,
        ErrorCode.AccessDenied => AccessDenied,
        ErrorCode.Unavailable => Unavailable,
        _ => Failed,
    };
}

/// <summary>The one user-facing error type. Thrown for conditions a user can understand and fix.</summary>
public class HavenException : Exception
{
    public HavenException(ErrorCode code, string message, string? hint = null, Exception? inner = null)
        : base(message, inner)
    {
        Code = code;
        Hint = hint;
    }

    public ErrorCode Code { get; }

    /// <summary>What the user can do about it, or null.</summary>
    public string? Hint { get; }
}
